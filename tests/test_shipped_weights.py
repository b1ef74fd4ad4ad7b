import numpy as np
import pytest
import torch

from keynet import KeyNetDetector
from keynet.model import count_parameters
from keynet.weights import load_model, load_state_dict_file, shipped_weights_path, to_int8


@pytest.mark.parametrize("model, params", [("keynet", 5873), ("tiny", 281)])
def test_shipped_weights_load_and_carry_their_recipe(model, params):
    path = shipped_weights_path(model)
    net = load_model(None, model)
    assert count_parameters(net) == params
    meta = torch.load(path, map_location="cpu", weights_only=True)
    assert meta["model"] == model
    assert meta["recipe"]["seed"] == 0 and "keynet train" in meta["recipe"]["command"]


@pytest.mark.parametrize("model", ["keynet", "tiny"])
def test_default_detector_finds_keypoints_on_a_real_image(model, data_dir):
    out = KeyNetDetector(model=model, num_keypoints=500).detect(data_dir / "hpatches/v_dogman/1.png")
    assert len(out["scores"]) == 500
    assert (out["scores"] > 0).all()
    # spread over the image, not piled up in one place
    xs = out["keypoints"][:, 0].numpy()
    assert np.ptp(xs) > 0.5 * 788


def test_int8_weights_round_trip_within_half_a_step_per_channel(tmp_path):
    torch.manual_seed(0)
    big = torch.randn(128, 8, 8, 8) * torch.logspace(-3, 1, 128)[:, None, None, None]  # channels of very different size
    big[5] = 0.0  # a dead channel
    conv = torch.randn(8, 4, 3, 3)  # 288 elements: stays float32
    state = {"conv.weight": conv, "bn.running_mean": torch.randn(8), "bn.num_batches_tracked": torch.tensor(3),
             "long.bias": torch.randn(5000)}  # one dimension: no output channels, stays float32
    q, scales = to_int8({**state, "big.weight": big})
    assert q["big.weight"].dtype == torch.int8 and set(scales) == {"big.weight"} and scales["big.weight"].shape == (128,)
    torch.save({"state_dict": q, "int8_scales": scales}, tmp_path / "w.pth")
    back = load_state_dict_file(tmp_path / "w.pth")
    assert back["big.weight"].dtype == torch.float32
    step = big.abs().amax(dim=(1, 2, 3)) / 127  # each channel's own step, however small the channel
    assert ((back["big.weight"] - big).abs().amax(dim=(1, 2, 3)) <= step / 2 * (1 + 1e-5)).all()
    assert all(torch.equal(back[k], v) for k, v in state.items())
    torch.save({"state_dict": q, "int8_scales": {"big.weight": scales["big.weight"][:5]}}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="int8_scales that do not fit"):
        load_state_dict_file(tmp_path / "bad.pth")


def test_shipped_descriptor_is_int8_and_carries_its_recipe():
    from keynet.features.descriptors import SHIPPED_DESCRIPTOR

    saved = torch.load(SHIPPED_DESCRIPTOR, map_location="cpu", weights_only=True)
    assert saved["state_dict"]["features.19.weight"].dtype == torch.int8  # the 8x8 head, 80 % of the weights
    assert "keynet train-descriptor" in saved["recipe"]["command"] and saved["recipe"]["args"]["seed"] == 0
