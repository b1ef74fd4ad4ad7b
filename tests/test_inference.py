import pytest
import torch

from keynet.inference import MAP_SCALES, FastKeyNet, downsampled_side, handcrafted_maps, pyrdown as fast_pyrdown
from keynet.model import HandcraftedBlock, build_model, pyrdown
from keynet.weights import load_model

from .conftest import read_gray


def randomise_batchnorm(net):
    g = torch.Generator().manual_seed(0)
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, generator=g)
            m.bias.data.uniform_(0.0, 0.1, generator=g)
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return net.eval()


def test_separable_filters_equal_the_convolutions():
    x = torch.rand(2, 1, 57, 71)
    scales = torch.tensor(MAP_SCALES)[:, None, None]
    torch.testing.assert_close(handcrafted_maps(x) / scales, HandcraftedBlock()(x), atol=1e-6, rtol=1e-5)
    for factor in (1.2, 2**0.5):
        size = (int(57 / factor), int(71 / factor))
        torch.testing.assert_close(fast_pyrdown(x, size), pyrdown(x, factor), atol=1e-6, rtol=1e-5)


def test_integer_downsampled_side_equals_the_float_rule():
    assert all(downsampled_side(side, 1.2) == int(float(side) / 1.2) for side in range(1, 20001))


@pytest.mark.parametrize("name", ["keynet", "tiny"])
def test_fast_network_equals_the_network(name):
    torch.manual_seed(0)
    net = randomise_batchnorm(build_model(name))
    x = torch.rand(2, 1, 83, 97)
    with torch.no_grad():
        a, b = net(x), FastKeyNet(net)(x)
    assert (a > 0).float().mean() > 0.05  # a live response, not an all-zero map
    assert (a - b).abs().max() <= 1e-5 * a.abs().max()


def test_fast_network_on_a_real_image(data_dir, reference_weights):
    net = load_model(reference_weights)
    x = read_gray(data_dir / "oxford_affine/graf/img1.png")
    with torch.no_grad():
        a, b = net(x), FastKeyNet(net)(x)
    assert (a - b).abs().max() <= 1e-5 * a.max()
