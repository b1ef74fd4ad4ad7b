import kornia.feature as KF
import pytest
import torch

from keynet.model import HandcraftedBlock, KeyNet, build_model, count_parameters, pyrdown
from keynet.weights import load_model, load_state_dict_file

from .conftest import read_gray


def test_parameter_counts():
    assert count_parameters(build_model("keynet")) == 5873
    assert count_parameters(build_model("tiny")) == 281


def test_architecture_is_the_released_one():
    # axelBarroso/Key.Net train_network.py defaults: --num-filters 8, --num-learnable-blocks 3,
    # --num-levels-within-net 3, --factor-scaling-pyramid 1.2, --conv-kernel-size 5.
    conf = build_model("keynet").conf
    assert (conf["num_filters"], conf["num_blocks"], conf["num_levels"], conf["pyramid_factor"], conf["kernel_size"]) == (
        8, 3, 3, 1.2, 5)


def test_handcrafted_block_on_a_quadratic_surface():
    # f = a x^2 + b y^2 + c x y: normalised Sobel derivatives are exact for quadratics in the interior.
    a, b, c = 0.003, -0.002, 0.001
    y, x = torch.meshgrid(torch.arange(40.0), torch.arange(50.0), indexing="ij")
    f = (a * x**2 + b * y**2 + c * x * y)[None, None]
    maps = HandcraftedBlock()(f)[0, :, 4:-4, 4:-4]
    x, y = x[4:-4, 4:-4], y[4:-4, 4:-4]
    dx, dy = 2 * a * x + c * y, 2 * b * y + c * x
    dxx, dyy, dxy = torch.full_like(x, 2 * a), torch.full_like(x, 2 * b), torch.full_like(x, c)
    expected = torch.stack([dx, dy, dx**2, dy**2, dx * dy, dxy, dxy**2, dxx, dyy, dxx * dyy])
    torch.testing.assert_close(maps, expected, atol=1e-6, rtol=1e-5)


def test_pyrdown_size_and_mean():
    x = torch.rand(1, 1, 61, 47)
    y = pyrdown(x, 1.2)
    assert y.shape[-2:] == (50, 39)  # floor(side / 1.2)
    assert abs(y.mean() - x.mean()) < 0.02


def test_reference_weights_load_strict(reference_weights):
    net = load_model(reference_weights)
    assert count_parameters(net) == 5873
    state = load_state_dict_file(reference_weights)
    assert set(net.state_dict()) == set(state)


@pytest.mark.parametrize("image", ["oxford_affine/graf/img1.png", "hpatches/v_dogman/1.png"])
def test_response_equals_kornia(data_dir, reference_weights, image):
    x = read_gray(data_dir / image)
    ours = load_model(reference_weights)
    theirs = KF.KeyNet(pretrained=False)
    theirs.load_state_dict(load_state_dict_file(reference_weights))
    theirs.eval()
    with torch.no_grad():
        a, b = ours(x), theirs(x)
    assert a.shape == x.shape
    assert torch.equal(a, b)  # bit for bit, not only close


def test_wrong_architecture_is_a_clear_error(reference_weights):
    with pytest.raises(ValueError, match="does not fit the 'tiny' architecture") as err:
        load_model(reference_weights, model="tiny")
    assert "\n" not in str(err.value) and "unexpected keys: feature_extractor.lb_block.conv1.0.weight" in str(err.value)


def test_truncated_weights_are_refused_on_one_line_naming_the_keys(reference_weights, tmp_path):
    state = load_state_dict_file(reference_weights)
    del state["last_conv.0.bias"]
    state["extra.weight"] = torch.zeros(3)
    path = tmp_path / "truncated.pth"
    torch.save(state, path)
    with pytest.raises(ValueError) as err:
        load_model(path)
    msg = str(err.value)
    assert "\n" not in msg and "does not fit the 'keynet' architecture" in msg
    assert "missing keys: last_conv.0.bias" in msg and "unexpected keys: extra.weight" in msg
    # Only the missing key: still refused, not loaded with the bias left at its random start.
    del state["extra.weight"]
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"missing keys: last_conv\.0\.bias$"):
        load_model(path)


def test_weights_of_the_wrong_shape_are_named(reference_weights, tmp_path):
    state = load_state_dict_file(reference_weights)
    state["last_conv.0.weight"] = state["last_conv.0.weight"][:, :, :3, :3]
    path = tmp_path / "reshaped.pth"
    torch.save(state, path)
    with pytest.raises(ValueError) as err:
        load_model(path)
    assert str(err.value).endswith(": wrong shapes: last_conv.0.weight (1x24x3x3 in the file, 1x24x5x5 expected)")


def test_a_file_that_is_not_a_checkpoint_is_one_clear_line(tmp_path):
    bad = tmp_path / "w.pth"
    bad.write_text("not a checkpoint")
    with pytest.raises(ValueError) as err:
        load_state_dict_file(bad)
    assert str(err.value) == f"{bad} is not a PyTorch weights file (torch.load cannot read it)"
    with pytest.raises(FileNotFoundError):
        load_state_dict_file(tmp_path / "missing.pth")


def test_tiny_forward_shape():
    net = KeyNet(build_model("tiny").conf).eval()
    assert net(torch.rand(2, 1, 40, 33)).shape == (2, 1, 40, 33)
