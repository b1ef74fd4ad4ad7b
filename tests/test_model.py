import kornia.feature as KF
import pytest
import torch

from keynet.model import HandcraftedBlock, KeyNet, build_model, count_parameters, pyrdown
from keynet.weights import load_model, load_state_dict_file

from .conftest import read_gray


def test_parameter_counts():
    assert count_parameters(build_model("keynet")) == 5873
    assert count_parameters(build_model("tiny")) == 281


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
    assert (a - b).abs().max().item() <= 1e-5


def test_wrong_architecture_is_a_clear_error(reference_weights):
    with pytest.raises(ValueError, match="does not fit the 'tiny' architecture"):
        load_model(reference_weights, model="tiny")


def test_tiny_forward_shape():
    net = KeyNet(build_model("tiny").conf).eval()
    assert net(torch.rand(2, 1, 40, 33)).shape == (2, 1, 40, 33)
