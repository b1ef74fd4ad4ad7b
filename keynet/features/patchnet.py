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

from collections.abc import Sequence

import kornia.feature as KF
import torch
from torch import nn

BASE_CHANNELS = (32, 32, 64, 64, 128, 128)  # kornia's HardNet, its six 3x3 convolutions


class ScaledHardNet(KF.HardNet):
    """HardNet on (B, 1, 32, 32) patches with ``round(c * width)`` channels in each of its six 3x3
    convolutions (c = 32, 32, 64, 64, 128, 128), or the six counts ``channels`` themselves (as
    ``channels_of`` reads them from weights); the descriptor stays (B, 128), unit L2 norm."""

    def __init__(self, width: float = 1.0, channels: Sequence[int] | None = None) -> None:
        if channels is None:
            channels = self.scaled_channels(width)
        nn.Module.__init__(self)  # kornia's __init__ would build (and seed-draw) the full-width layers
        layers: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(zip([1, *channels[:-1]], channels)):
            stride = 2 if i in (2, 4) else 1
            layers += [nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False),
                       nn.BatchNorm2d(c_out, affine=False), nn.ReLU()]
        layers += [nn.Dropout(0.3), nn.Conv2d(channels[-1], 128, kernel_size=8, bias=False),
                   nn.BatchNorm2d(128, affine=False)]
        self.features = nn.Sequential(*layers)
        self.channels = tuple(channels)

    @staticmethod
    def scaled_channels(width: float) -> list[int]:
        """The six channel counts at ``width`` (``round(c * width)``, at least 1); a width that is not
        positive is refused."""
        if not width > 0:
            raise ValueError(f"width must be positive, not {width}")
        return [max(1, round(c * width)) for c in BASE_CHANNELS]

    @staticmethod
    def channels_of(state: dict[str, torch.Tensor]) -> list[int] | None:
        """The six channel counts of a ``ScaledHardNet`` state dict (each 3x3 convolution's outputs:
        a width does not round-trip, since ``round(c * width)`` rounds each count on its own), or
        None for a state without those convolutions."""
        keys = [f"features.{3 * i}.weight" for i in range(len(BASE_CHANNELS))]
        if not all(k in state and state[k].ndim == 4 for k in keys):
            return None
        return [int(state[k].shape[0]) for k in keys]
