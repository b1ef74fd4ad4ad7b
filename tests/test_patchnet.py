"""``ScaledHardNet``: kornia's HardNet at width 1 (same parameters, initialisation and output), and a
narrower network that the descriptor loaders recognise from its weights."""

from __future__ import annotations

from pathlib import Path

import kornia.feature as KF
import numpy as np
import pytest
import torch

from keynet.features.descriptors import load_patch_network
from keynet.features.patchnet import ScaledHardNet
from keynet.train.descriptor import new_network


def test_width_one_is_kornias_hardnet():
    ours = new_network(seed=5)
    torch.manual_seed(5)
    kornia_net = KF.HardNet(pretrained=False)
    # same names, shapes and seeded initial values: old full-width recipes are reproduced exactly
    assert list(ours.state_dict()) == list(kornia_net.state_dict())
    for k, v in kornia_net.state_dict().items():
        assert torch.equal(ours.state_dict()[k], v), k
    x = torch.rand(6, 1, 32, 32)
    assert torch.equal(ours.eval()(x), kornia_net.eval()(x))


def test_half_width_has_a_quarter_of_the_convolutions(tmp_path: Path):
    half = ScaledHardNet(0.5).eval()
    convs = [m for m in half.features if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 16, 32, 32, 64, 64, 128]
    full_3x3 = sum(m.weight.numel() for m in KF.HardNet(pretrained=False).features[:-4] if isinstance(m, torch.nn.Conv2d))
    half_3x3 = sum(c.weight.numel() for c in convs[:-1])
    assert half_3x3 / full_3x3 == pytest.approx(0.25, abs=0.01)
    out = half(torch.rand(4, 1, 32, 32))
    assert out.shape == (4, 128) and torch.allclose(out.norm(dim=1), torch.ones(4), atol=1e-5)
    # a weights file of it loads as "hardnet" (its channels read from the weights), or found without a name
    x = torch.rand(3, 1, 32, 32)
    for width, channels in ((0.5, (16, 16, 32, 32, 64, 64)), (0.3, (10, 10, 19, 19, 38, 38))):
        net_w = ScaledHardNet(width).eval()
        assert net_w.channels == channels  # 0.3: each count rounded on its own, not a multiple of the first
        torch.save({"state_dict": net_w.state_dict()}, tmp_path / f"w{width}.pth")
        for arch in ("hardnet", None):
            name, net = load_patch_network(tmp_path / f"w{width}.pth", arch)
            assert name == "hardnet" and net.channels == channels
            np.testing.assert_allclose(net(x).detach().numpy(), net_w(x).detach().numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="width must be positive"):
        ScaledHardNet(0.0)
