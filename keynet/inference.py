"""Key.Net reorganised for fast inference: the same function as ``KeyNet`` up to float rounding.

What changes, and why it is exact in real arithmetic:
- BatchNorm (eval mode) is an affine map per channel, folded into the preceding convolution.
- The final 5x5 conv over the concatenated levels is a sum over its input channels, so it splits
  into a depthwise conv per level (each channel with its own 5x5 slice of the kernel) followed by a
  channel sum. oneDNN runs a 24-in/1-out convolution slowly (one output channel fills no vector
  register); the depthwise form is about 4x faster here and needs no 24-channel concat.
- The fixed filters (Sobel derivatives, the pyramid's binomial blur) are separable: they run as a few
  shifted adds instead of single-channel convolutions, which oneDNN also runs slowly.
"""

from __future__ import annotations

from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import nn

from .model import KeyNet


def _fold_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    weight = conv.weight * scale[:, None, None, None]
    bias = (conv.bias - bn.running_mean) * scale + bn.bias
    return weight.detach().clone(), bias.detach().clone()


def _sobel(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised Sobel (dx, dy) of (N,1,H,W) with a replicated border, as ``HandcraftedBlock``."""
    p = F.pad(x, (1, 1, 1, 1), mode="replicate")
    smooth_rows = p[..., :-2, :] + 2 * p[..., 1:-1, :] + p[..., 2:, :]  # (N,1,H,W+2)
    smooth_cols = p[..., :-2] + 2 * p[..., 1:-1] + p[..., 2:]  # (N,1,H+2,W)
    dx = (smooth_rows[..., 2:] - smooth_rows[..., :-2]) * 0.125
    dy = (smooth_cols[..., 2:, :] - smooth_cols[..., :-2, :]) * 0.125
    return dx, dy


def handcrafted_maps(x: torch.Tensor) -> torch.Tensor:
    """The 10 maps of ``model.HandcraftedBlock`` for (B,1,H,W), by separable filtering."""
    dx, dy = _sobel(x)
    dxx, dxy = _sobel(dx)
    dyy = _sobel(dy)[1]
    return torch.cat([dx, dy, dx * dx, dy * dy, dx * dy, dxy, dxy * dxy, dxx, dyy, dxx * dyy], 1)


def downsampled_side(side: int, factor: float) -> int:
    """``floor(side / factor)`` in integer arithmetic on the factor as a fraction (1.2 = 6/5), so it
    stays symbolic when exported to ONNX; equal to ``int(float(side) / factor)`` for 1.2 (tested)."""
    q = Fraction(factor).limit_denominator(1000)
    return side * q.denominator // q.numerator


def pyrdown(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``model.pyrdown`` to an explicit output ``size`` (h, w), with the 5x5 binomial blur applied as
    two separable passes."""
    p = F.pad(x, (2, 2, 2, 2), mode="reflect")
    v = (p[..., :-4, :] + p[..., 4:, :]) + 4 * (p[..., 1:-3, :] + p[..., 3:-1, :]) + 6 * p[..., 2:-2, :]
    b = (v[..., :-4] + v[..., 4:]) + 4 * (v[..., 1:-3] + v[..., 3:-1]) + 6 * v[..., 2:-2]
    return F.interpolate(b * (1.0 / 256.0), size=size, mode="bilinear", align_corners=False)


class FastKeyNet(nn.Module):
    """Inference-only copy of a ``KeyNet`` (its weights at construction time). (B,1,H,W) -> (B,1,H,W)."""

    def __init__(self, net: KeyNet) -> None:
        super().__init__()
        c = net.conf
        self.num_levels = c["num_levels"]
        self.pyramid_factor = c["pyramid_factor"]
        self.min_input_size = net.min_input_size
        self.padding = c["kernel_size"] // 2
        blocks = list(net.feature_extractor.lb_block.children())
        for i, block in enumerate(blocks):
            w, b = _fold_batchnorm(block[0], block[1])
            self.register_buffer(f"w{i}", w.contiguous(memory_format=torch.channels_last))
            self.register_buffer(f"b{i}", b)
        self.num_blocks = len(blocks)
        last = net.last_conv[0]
        nf = c["num_filters"]
        self.last_padding = last.kernel_size[0] // 2
        # (levels, F, 1, k, k): level l's channels of the final kernel, one depthwise filter each
        per_level = last.weight.detach()[0].reshape(self.num_levels, nf, 1, *last.kernel_size)
        self.register_buffer("last_weight", per_level.clone())
        self.register_buffer("last_bias", last.bias.detach().clone())

    def features(self, x: torch.Tensor) -> torch.Tensor:
        f = handcrafted_maps(x).contiguous(memory_format=torch.channels_last)
        for i in range(self.num_blocks):
            f = F.conv2d(f, getattr(self, f"w{i}"), getattr(self, f"b{i}"), padding=self.padding).relu_()
        return f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        out = None
        for level in range(self.num_levels):
            if level > 0:
                x = pyrdown(x, (downsampled_side(x.shape[-2], self.pyramid_factor),
                                downsampled_side(x.shape[-1], self.pyramid_factor)))
            f = self.features(x)
            if level > 0:
                f = F.interpolate(f, size=(h, w), mode="bilinear", align_corners=False)
            per_channel = F.conv2d(f, self.last_weight[level], padding=self.last_padding, groups=f.shape[1])
            term = per_channel.sum(1, keepdim=True)
            out = term if out is None else out.add_(term)
        return out.add_(self.last_bias.view(1, 1, 1, 1)).relu_().contiguous()
