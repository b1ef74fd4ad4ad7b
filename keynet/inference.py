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
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from .model import KeyNet
from .parallel import run_tasks


def _fold_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    weight = conv.weight * scale[:, None, None, None]
    bias = (conv.bias - bn.running_mean) * scale + bn.bias
    return weight.detach().clone(), bias.detach().clone()


# Each map is computed at 2**k times its true value: the Sobel kernels' 1/8 normalisation is left
# out (dx, dy carry 8; second derivatives and products of first derivatives 64; products of second
# derivatives 4096). The first convolution's weights are divided by the same powers of two, which is
# exact in floating point, so this saves a pass over every map at no cost in accuracy.
MAP_SCALES = (8.0, 8.0, 64.0, 64.0, 64.0, 64.0, 4096.0, 64.0, 64.0, 4096.0)


def _sobel8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """8 x the normalised Sobel (dx, dy) of (N,1,H,W) with a replicated border, as
    ``HandcraftedBlock``; the [1 2 1] smoothing as two pair sums, one pass fewer than a + 2b + c."""
    p = F.pad(x, (1, 1, 1, 1), mode="replicate")
    s = p[..., :-1, :] + p[..., 1:, :]
    down = s[..., :-1, :] + s[..., 1:, :]  # (N,1,H,W+2): [1 2 1] along y
    s = p[..., :-1] + p[..., 1:]
    across = s[..., :-1] + s[..., 1:]  # (N,1,H+2,W): [1 2 1] along x
    return down[..., 2:] - down[..., :-2], across[..., 2:, :] - across[..., :-2, :]


def handcrafted_maps(x: torch.Tensor) -> torch.Tensor:
    """The 10 maps of ``model.HandcraftedBlock`` for (B,1,H,W), each times its ``MAP_SCALES`` entry,
    by separable filtering: (B,10,H,W)."""
    dx, dy = _sobel8(x)
    dxx, dxy = _sobel8(dx)
    dyy = _sobel8(dy)[1]
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


def _fused_conv_relu_applies(x: torch.Tensor) -> bool:
    """Whether oneDNN can apply the ReLU inside the convolution (saves a pass over its output):
    float32 on a CPU with oneDNN, outside tracing (ONNX export sees plain conv + ReLU)."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and torch.backends.mkldnn.is_available()
            and not torch.jit.is_tracing() and not torch.jit.is_scripting()
            and hasattr(torch.ops.mkldnn, "_convolution_pointwise"))


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
            if i == 0:
                w = w / torch.tensor(MAP_SCALES)[None, :, None, None]
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

    def _conv_relu(self, x: torch.Tensor, i: int) -> torch.Tensor:
        w, b = getattr(self, f"w{i}"), getattr(self, f"b{i}")
        if _fused_conv_relu_applies(x):
            p = [self.padding] * 2
            return torch.ops.mkldnn._convolution_pointwise(x, w, b, p, [1, 1], [1, 1], 1, "relu", [], "")
        return F.conv2d(x, w, b, padding=self.padding).relu_()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        # The maps stay channels-first: oneDNN reorders them for the convolution faster than a
        # separate channels-last copy would.
        f = handcrafted_maps(x)
        for i in range(self.num_blocks):
            f = self._conv_relu(f, i)
        return f

    def _level_term(self, x: torch.Tensor, level: int, size: tuple[int, int]) -> torch.Tensor:
        """Level ``level``'s share of the final convolution, at the output ``size``: (B,1,H,W)."""
        f = self.features(x)
        if level > 0:
            f = F.interpolate(f, size=size, mode="bilinear", align_corners=False)
        per_channel = F.conv2d(f, self.last_weight[level], padding=self.last_padding, groups=f.shape[1])
        return per_channel.sum(1, keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = (x.shape[-2], x.shape[-1])
        inputs = [x]
        for _ in range(1, self.num_levels):
            x = pyrdown(x, (downsampled_side(x.shape[-2], self.pyramid_factor),
                            downsampled_side(x.shape[-1], self.pyramid_factor)))
            inputs.append(x)
        # The levels are independent until the final sum, which adds them in level order.
        terms = run_tasks([partial(self._level_term, xl, level, size) for level, xl in enumerate(inputs)])
        out = terms[0]
        for term in terms[1:]:
            out = out.add_(term)
        return out.add_(self.last_bias.view(1, 1, 1, 1)).relu_().contiguous()
