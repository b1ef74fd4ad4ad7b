import numpy as np
import pytest
import torch

from keynet import KeyNetDetector
from keynet.model import count_parameters
from keynet.weights import load_model, shipped_weights_path


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
