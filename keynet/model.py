"""The Key.Net response network (Barroso-Laguna et al., ICCV 2019).

Layout, identical to the reference PyTorch port and to ``kornia.feature.KeyNet`` so that their
state dicts load with ``strict=True``::

    image (B,1,H,W) in [0, 1]
      -> for each of 3 in-network pyramid levels (level l = pyrdown(level l-1, factor 1.2)):
           handcrafted block: 10 fixed Sobel maps
               [dx, dy, dx^2, dy^2, dx*dy, dxy, dxy^2, dxx, dyy, dxx*dyy]
           learnable block (shared over the levels):
               3 x [conv5x5(F) -> BatchNorm -> ReLU]
           bilinear upsampling back to (H, W)
      -> concat (3F channels) -> conv5x5(1) -> ReLU -> response (B,1,H,W)

``F = 8`` gives Key.Net: 5,873 parameters. ``TINY_CONF`` gives Tiny-Key.Net (see ``TINY_CONF``).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

KEYNET_CONF: dict[str, Any] = {
    "num_filters": 8,  # F: filters of each learnable conv
    "num_blocks": 3,  # conv-BN-ReLU blocks in the learnable block
    "num_levels": 3,  # in-network pyramid levels
    "pyramid_factor": 1.2,  # downsampling factor between in-network levels
    "kernel_size": 5,  # learnable convs
    "last_kernel_size": 5,  # the final conv over the concatenated levels
}

# Tiny-Key.Net: the paper's smallest model, "handcrafted filters plus one learned filter".
# One learnable block of a single 5x5 filter over the 10 handcrafted maps (250 weights + 1 bias,
# + BatchNorm's 2 affine parameters), shared over the 3 levels, and a 3x3 final conv over the 3
# concatenated maps (27 + 1): 281 trainable parameters.
TINY_CONF: dict[str, Any] = {
    **KEYNET_CONF,
    "num_filters": 1,
    "num_blocks": 1,
    "last_kernel_size": 3,
}

MODEL_CONFS: dict[str, dict[str, Any]] = {"keynet": KEYNET_CONF, "tiny": TINY_CONF}

_PYRAMID_KERNEL_1D = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0
# Sobel x-derivative, normalised so that a ramp of slope s gives s (kernel sum of |w| = 8).
_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0


def pyrdown(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Blur with the 5x5 binomial kernel (reflect border) and resize to ``floor(side / factor)``.

    Bilinear resampling with ``align_corners=False``; the same operation as ``kornia.geometry.pyrdown``.
    """
    k1 = _PYRAMID_KERNEL_1D.to(device=x.device, dtype=x.dtype)
    kernel = (k1[:, None] * k1[None, :]).expand(x.shape[1], 1, 5, 5)
    blurred = F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), kernel, groups=x.shape[1])
    h, w = x.shape[-2:]
    size = (int(float(h) / factor), int(float(w) / factor))
    return F.interpolate(blurred, size=size, mode="bilinear", align_corners=False)


class HandcraftedBlock(nn.Module):
    """Ten fixed derivative maps of a (B,1,H,W) image, in kornia's channel order.

    First derivatives are normalised Sobel filters on a replicate-padded image; second derivatives
    apply the same filters to the first ones (dxx = d/dx dx, dxy = d/dy dx, dyy = d/dy dy).
    """

    def __init__(self) -> None:
        super().__init__()
        # Non-persistent: fixed filters are not part of the state dict (kornia's layout).
        self.register_buffer("sobel", torch.stack([_SOBEL_X, _SOBEL_X.t()])[:, None], persistent=False)

    def _gradient(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), self.sobel.to(x.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        d = self._gradient(x)  # (B,2,H,W): dx, dy
        dd = self._gradient(d.reshape(b * 2, 1, h, w)).reshape(b, 4, h, w)  # dxx, dxy, dyx, dyy
        dx, dy = d[:, 0:1], d[:, 1:2]
        dxx, dxy, dyy = dd[:, 0:1], dd[:, 1:2], dd[:, 3:4]
        return torch.cat([dx, dy, dx * dx, dy * dy, dx * dy, dxy, dxy * dxy, dxx, dyy, dxx * dyy], 1)


def _conv_block(cin: int, cout: int, kernel_size: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel_size, padding=kernel_size // 2),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class LearnableBlock(nn.Sequential):
    def __init__(self, in_channels: int, num_filters: int, num_blocks: int, kernel_size: int) -> None:
        super().__init__()
        for i in range(num_blocks):
            self.add_module(f"conv{i}", _conv_block(in_channels if i == 0 else num_filters, num_filters, kernel_size))


class FeatureExtractor(nn.Module):
    def __init__(self, conf: Mapping[str, Any]) -> None:
        super().__init__()
        self.hc_block = HandcraftedBlock()
        self.lb_block = LearnableBlock(10, conf["num_filters"], conf["num_blocks"], conf["kernel_size"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Channels-last is faster for these narrow convolutions on CPU, and it is the layout kornia
        # uses, so the two implementations round identically.
        return self.lb_block(self.hc_block(x).contiguous(memory_format=torch.channels_last))


class KeyNet(nn.Module):
    """Key.Net response function.

    Args:
        conf: architecture, ``KEYNET_CONF`` (default) or ``TINY_CONF``; keys missing from it take
            ``KEYNET_CONF``'s values.

    Shape:
        input ``(B, 1, H, W)`` grayscale in ``[0, 1]``; output ``(B, 1, H, W)``, non-negative.
    """

    def __init__(self, conf: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.conf = {**KEYNET_CONF, **(conf or {})}
        c = self.conf
        self.feature_extractor = FeatureExtractor(c)
        k = c["last_kernel_size"]
        self.last_conv = nn.Sequential(
            nn.Conv2d(c["num_filters"] * c["num_levels"], 1, k, padding=k // 2),
            nn.ReLU(inplace=True),
        )

    @property
    def min_input_size(self) -> int:
        """Smallest side the in-network pyramid can take (reflect padding needs >= 3 px per level)."""
        return int(3 * self.conf["pyramid_factor"] ** (self.conf["num_levels"] - 1)) + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        feats = [self.feature_extractor(x)]
        for _ in range(1, self.conf["num_levels"]):
            x = pyrdown(x, self.conf["pyramid_factor"])
            f = self.feature_extractor(x)
            feats.append(F.interpolate(f, size=(h, w), mode="bilinear", align_corners=False))
        return self.last_conv(torch.cat(feats, 1))


def build_model(name: str = "keynet") -> KeyNet:
    """A freshly initialised model by name: ``"keynet"`` or ``"tiny"``."""
    if name not in MODEL_CONFS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODEL_CONFS)}")
    return KeyNet(MODEL_CONFS[name])


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (BatchNorm running statistics are buffers and do not count)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
