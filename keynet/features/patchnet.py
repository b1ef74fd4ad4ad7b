"""``ScaledHardNet``: kornia's HardNet architecture with its channel counts scaled by a width factor.

kornia's ``HardNet`` fixes its channels (32-32-64-64-128-128, then an 8x8 convolution to 128); a
narrower network costs about ``width^2`` of the compute, which on CPUs without bfloat16 decides how
many training steps fit a time budget and how fast descriptors are computed. kornia has no width
option, so the layers are built here, in kornia's order and with its parameter names: at
``width=1`` a state dict loads into ``kornia.feature.HardNet`` and back, and seeded initialisation
gives the same weights. The forward pass (per-patch standardisation, the layers, L2 normalisation)
is kornia's.
"""

from __future__ import annotations

import kornia.feature as KF
from torch import nn


class ScaledHardNet(KF.HardNet):
    """HardNet on (B, 1, 32, 32) patches with ``round(c * width)`` channels in each of its six 3x3
    convolutions (c = 32, 32, 64, 64, 128, 128); the descriptor stays (B, 128), unit L2 norm."""

    def __init__(self, width: float = 1.0) -> None:
        if width <= 0:
            raise ValueError(f"width must be positive, not {width}")
        nn.Module.__init__(self)  # kornia's __init__ would build (and seed-draw) the full-width layers
        channels = [max(1, round(c * width)) for c in (32, 32, 64, 64, 128, 128)]
        layers: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(zip([1, *channels[:-1]], channels)):
            stride = 2 if i in (2, 4) else 1
            layers += [nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False),
                       nn.BatchNorm2d(c_out, affine=False), nn.ReLU()]
        layers += [nn.Dropout(0.3), nn.Conv2d(channels[-1], 128, kernel_size=8, bias=False),
                   nn.BatchNorm2d(128, affine=False)]
        self.features = nn.Sequential(*layers)
        self.width = width

    @staticmethod
    def width_of(state: dict) -> float:
        """The width of a ``ScaledHardNet`` state dict (from its first convolution's channels)."""
        return state["features.0.weight"].shape[0] / 32
