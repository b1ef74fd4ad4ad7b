"""Key.Net reorganised for fast inference: the same function as ``KeyNet`` up to float rounding.

What changes, and why it is exact in real arithmetic:
- BatchNorm (eval mode) is an affine map per channel, folded into the preceding convolution.
- The final 5x5 conv over the concatenated levels is a sum over its input channels. oneDNN runs a
  24-in/1-out convolution slowly (one output channel fills no vector register). On the CPU one
  compiled pass resizes each level's features row by row and sums the convolution over a ring of
  six rows (``kernels.final_response``), without storing the upsampled features; elsewhere (GPU,
  ONNX export) it splits into a depthwise conv per level followed by a channel sum.
- The fixed filters (Sobel derivatives, the pyramid's binomial blur) are separable: they run as a few
  shifted adds instead of single-channel convolutions, which oneDNN also runs slowly. On the CPU
  the 10 handcrafted maps come from one compiled pass written channels-last, and the in-network
  levels are blurred and resized by another (``keynet.kernels``).
- With AVX512, the 8-channel convolutions run on column pairs (``_pair_columns``): 16 channels
  fill oneDNN's 16-float vectors, at the price of some products with zero weights. On AMD Zen 4
  they run in keynet's own kernel instead (``keynet.native``), one pixel's 8 channels to an 8-float
  vector, without zero products; the maps and the blocks' outputs are then written inside a border
  of zeros, the padding that the next convolution reads.
- ReLU runs inside oneDNN's convolution (a post-op) instead of as a pass of its own.
- A convolution with a single output channel (Tiny-Key.Net's blocks) runs as one 1 x k convolution
  with k output channels, one per kernel row, followed by a sum of row-shifted slices; on the CPU a
  first block of one 5x5 filter runs in the compiled pass that makes the maps.
- Optionally (``dtype=torch.bfloat16``, not exact) the learned blocks' convolutions run in bfloat16
  with float32 accumulation, which CPUs with AVX512-BF16 or AMX execute several times faster; the
  handcrafted maps are computed in float32 and rounded, the resampling and the final convolution
  stay float32.
- The image is processed in row bands, each with the rows of context its result depends on, and the
  in-network levels are resampled on the whole image's grid, so a band's rows equal the whole
  image's. Bands keep the working set in the caches, bound memory on large images, and run in
  parallel on torch's threads (``keynet.parallel``).
"""

from __future__ import annotations

import math
import threading
from fractions import Fraction
from functools import lru_cache, partial

import torch
import torch.nn.functional as F
from torch import nn

from . import kernels, native
from .kernels import final_response, handcrafted_maps_channels_last, single_filter_block, zero_border
from .model import KeyNet
from .parallel import concurrency, run_tasks


def _conv2d_relu(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, padding: tuple[int, int]) -> torch.Tensor:
    """relu(conv2d(x, w, b)) with the ReLU fused into oneDNN's convolution where it can be."""
    if _fused_conv_relu_applies(x):
        return torch.ops.mkldnn._convolution_pointwise(x, w, b, list(padding), [1, 1], [1, 1], 1, "relu", [], "")
    return F.conv2d(x, w, b, padding=padding).relu_()


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


def handcrafted_maps(x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The 10 maps of ``model.HandcraftedBlock`` for (B,1,H,W), each times its ``MAP_SCALES`` entry,
    by separable filtering: (B,10,H,W), computed in ``x``'s dtype and stored in ``dtype`` (default:
    the same)."""
    dx, dy = _sobel8(x)
    dxx, dxy = _sobel8(dx)
    dyy = _sobel8(dy)[1]
    maps = [dx, dy, dx * dx, dy * dy, dx * dy, dxy, dxy * dxy, dxx, dyy, dxx * dyy]
    if dtype is None or dtype == x.dtype:
        return torch.cat(maps, 1)
    # the concatenation converts as it copies: no pass of its own
    return torch.cat(maps, 1, out=x.new_empty((x.shape[0], len(maps), *x.shape[2:]), dtype=dtype))


@lru_cache(maxsize=None)
def _fraction(factor: float) -> Fraction:
    # Denominators up to 1e9 reproduce the float rule exactly for sides up to 40,000 px at factors
    # 1.2 and sqrt(2) (tested); small ones do not for sqrt(2).
    return Fraction(factor).limit_denominator(10**9)


def downsampled_side(side: int, factor: float) -> int:
    """``floor(side / factor)`` in integer arithmetic on the factor as a fraction (1.2 = 6/5), so it
    stays symbolic when exported to ONNX; equal to ``int(float(side) / factor)`` (tested)."""
    q = _fraction(factor)
    return side * q.denominator // q.numerator


def upsampled_side(side: int, factor: float) -> int:
    """``floor(side * factor)``, like ``downsampled_side``; equal to ``int(side * factor)`` (tested)."""
    q = _fraction(factor)
    return side * q.numerator // q.denominator


def pyrdown(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``model.pyrdown`` to an explicit output ``size`` (h, w), with the 5x5 binomial blur applied as
    two separable passes (on the CPU, in one compiled pass with the resize)."""
    if eager_on_cpu(x) and x.dtype == torch.float32 and x.shape[1] == 1 and min(x.shape[-2:]) >= 3:
        return kernels.pyrdown(x, _source_rows(0, size[0], x.shape[-2], size[0]),
                               _source_rows(0, size[1], x.shape[-1], size[1]))
    p = F.pad(x, (2, 2, 2, 2), mode="reflect")
    v = (p[..., :-4, :] + p[..., 4:, :]) + 4 * (p[..., 1:-3, :] + p[..., 3:-1, :]) + 6 * p[..., 2:-2, :]
    b = (v[..., :-4] + v[..., 4:]) + 4 * (v[..., 1:-3] + v[..., 3:-1]) + 6 * v[..., 2:-2]
    return F.interpolate(b * (1.0 / 256.0), size=size, mode="bilinear", align_corners=False)


# A convolution whose output channels times kernel rows fit in this many channels is rewritten
# (``_row_split``): Tiny-Key.Net's, with one output channel and 5 rows.
_ROW_SPLIT_CHANNELS = 8


def _row_split(w: torch.Tensor) -> torch.Tensor:
    """(O, C, k, k) -> (8, C, 1, k): row r of output o's kernel as output channel o*k + r (zeros after).

    oneDNN runs a convolution with one output channel (Tiny-Key.Net's) at a few GFLOP/s, because one
    channel fills no vector register. Its k row-convolutions as 8 channels of one 1 x k convolution,
    followed by a sum of k row-shifted slices, were 2-3x faster in development measurements, and
    give the same sum.
    """
    o, c, k, _ = w.shape
    rows = torch.zeros(_ROW_SPLIT_CHANNELS, c, 1, k, dtype=w.dtype)
    rows[: o * k] = w.permute(0, 2, 1, 3).reshape(o * k, c, 1, k)
    return rows


def native_bfloat16() -> bool:
    """Whether this CPU runs oneDNN's bfloat16 convolutions natively (AVX512-BF16 or AMX); elsewhere
    they are emulated and slower than float32."""
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def eager_on_cpu(x: torch.Tensor) -> bool:
    """Whether ``x`` is on the CPU outside tracing and scripting, where the kernels below, which
    ONNX export cannot record, may be used."""
    return x.device.type == "cpu" and not torch.jit.is_tracing() and not torch.jit.is_scripting()


def _pair_columns(w: torch.Tensor) -> torch.Tensor:
    """(O, C, k, k) -> (2 O, 2 C, k, k'): the same convolution on column pairs (``_paired``).

    Output channel ``po * O + o`` is output o at the pair's column ``po`` (0 even, 1 odd), input
    channel ``pi * C + c`` is input c at column ``pi``, and kernel column ``d + k' // 2`` reads the
    pair ``d`` pairs away, i.e. original column offset ``2 d + pi - po``; offsets outside the kernel
    get zero weights.
    """
    o, c, k, _ = w.shape
    r = k // 2
    reach = (r + 1) // 2  # pairs a kernel row reaches on each side
    paired = torch.zeros(2 * o, 2 * c, k, 2 * reach + 1, dtype=w.dtype)
    for po in range(2):
        for pi in range(2):
            for d in range(-reach, reach + 1):
                offset = 2 * d + pi - po
                if abs(offset) <= r:
                    paired[po * o : (po + 1) * o, pi * c : (pi + 1) * c, :, d + reach] = w[..., offset + r]
    return paired


def _paired(f: torch.Tensor) -> torch.Tensor:
    """(B,C,H,W) channels-last with W even -> (B,2C,H,W/2): each pair of columns as one column with
    both columns' channels. A view: channels-last memory already stores them in this order."""
    b, c, h, w = f.shape
    return f.permute(0, 2, 3, 1).reshape(b, h, w // 2, 2 * c).permute(0, 3, 1, 2)


def _unpaired(f: torch.Tensor) -> torch.Tensor:
    """The inverse view of ``_paired``."""
    b, c2, h, w2 = f.shape
    return f.permute(0, 2, 3, 1).reshape(b, h, 2 * w2, c2 // 2).permute(0, 3, 1, 2)


# Column pairs fill 16-float vectors with Key.Net's 8 channels (see FastKeyNet.features).
_PAIR_COLUMNS = torch.backends.cpu.get_cpu_capability() == "AVX512"


def _fused_conv_relu_applies(x: torch.Tensor) -> bool:
    """Whether oneDNN can apply the ReLU inside the convolution (saves a pass over its output):
    float32, or bfloat16 where native, on a CPU with oneDNN, outside tracing (ONNX export sees
    plain conv + ReLU)."""
    return (eager_on_cpu(x) and torch.backends.mkldnn.is_available()
            and (x.dtype == torch.float32 or (x.dtype == torch.bfloat16 and native_bfloat16()))
            and hasattr(torch.ops.mkldnn, "_convolution_pointwise"))


# dtypes the learned blocks can run in
COMPUTE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}

_thread_buffers: dict[tuple[int, str], torch.Tensor] = {}


def thread_buffer(name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised contiguous tensor in memory that this thread keeps under ``name`` and gets
    again on its next request (grown when too small; ``release_thread_buffers`` frees them all).

    Memory freed by one call and allocated again by the next may have been given back to the
    system in between, and then costs a page fault per 4 KB page (about a millisecond per
    megabyte on this project's VMs): up to 15% of a response in benchmark runs. The native path's
    maps and features (about 50 MB per thread for the largest bands) stay instead, until the
    thread ends (they are dropped at the next allocation after that)."""
    key = (threading.get_ident(), name)
    size = math.prod(shape) * dtype.itemsize
    buffer = _thread_buffers.get(key)
    if buffer is None or buffer.numel() < size:
        # (rare) also drop the buffers of threads that have ended, e.g. a server's request threads
        alive = {t.ident for t in threading.enumerate()}
        for ended in [k for k in list(_thread_buffers) if k[0] not in alive]:
            _thread_buffers.pop(ended, None)
        buffer = _thread_buffers[key] = torch.empty(size, dtype=torch.uint8)
    return buffer[:size].view(dtype).view(shape)


def release_thread_buffers() -> None:
    """Frees the memory ``thread_buffer`` keeps, in every thread (once no keynet call is running;
    later calls allocate it again)."""
    _thread_buffers.clear()


class LearnedBlocks(nn.Module):
    """Key.Net's learned blocks (the handcrafted maps, then each 5x5 conv + BatchNorm + ReLU) in their
    fastest form on this CPU, from a ``KeyNet``'s weights at construction time: BatchNorm folded
    into the convolutions, and the weights laid out for the path that runs them (keynet's own kernel,
    column pairs or row splits; see ``features``). (B,1,h,w) -> (B,F,h,w).

    Args:
        net: the network.
        dtype: float32, or bfloat16 for the convolutions' maps, weights and features.
    """

    def __init__(self, net: KeyNet, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.dtype = dtype
        c = net.conf
        self.padding = c["kernel_size"] // 2
        blocks = list(net.feature_extractor.lb_block.children())
        self.row_split: list[bool] = []
        # Whether the first block runs with the maps in one compiled pass (see features)
        self.single_filter = False
        for i, block in enumerate(blocks):
            w, b = _fold_batchnorm(block[0], block[1])
            if i == 0:
                w = w / torch.tensor(MAP_SCALES)[None, :, None, None]
                self.single_filter = dtype == torch.float32 and w.shape[0] == 1 and w.shape[-1] == 5
                if self.single_filter:
                    self.register_buffer("single_w", w.clone())
            if w.shape[0] == 8 and w.shape[-1] == 5 and w.shape[1] % 2 == 0:  # what native.conv5x5_relu8 takes
                self.register_buffer(f"native_w{i}", native.pack_weight(w, dtype))
                self.register_buffer(f"native_b{i}", b.clone())
            self.row_split.append(w.shape[0] * w.shape[2] <= _ROW_SPLIT_CHANNELS)
            if self.row_split[-1]:
                w = _row_split(w)
            self.register_buffer(f"w{i}", w.to(dtype).contiguous(memory_format=torch.channels_last))
            self.register_buffer(f"b{i}", b.to(dtype))
            if not self.row_split[-1]:
                paired = _pair_columns(w).to(dtype).contiguous(memory_format=torch.channels_last)
                self.register_buffer(f"paired_w{i}", paired)
                self.register_buffer(f"paired_b{i}", torch.cat([b, b]).to(dtype))
        self.num_blocks = len(blocks)
        # Whether the blocks run in keynet's own kernel, or else on column pairs (see features);
        # attributes so that tests can compare.
        self.native_conv = (native.kernel_applies(dtype)
                            and all(hasattr(self, f"native_w{i}") for i in range(self.num_blocks)))
        self.pair_columns = _PAIR_COLUMNS and not any(self.row_split)
        self.kernel_size = c["kernel_size"]
        # Rows of context a feature row depends on: 2 for the second derivatives, then each block's conv.
        self.feature_halo = 2 + self.num_blocks * self.padding

    def _conv_relu(self, x: torch.Tensor, i: int) -> torch.Tensor:
        w, b = getattr(self, f"w{i}"), getattr(self, f"b{i}")
        if self.row_split[i]:  # see _row_split: sum the kernel rows' partial results
            k, h = self.kernel_size, x.shape[-2]
            # (B, >= O*k, H + k - 1, W); the rows are summed in float32 also for bfloat16 input
            rows = F.conv2d(x, w, padding=self.padding).float()
            outs = []
            for o in range(b.shape[0]):
                acc = rows[:, o * k : o * k + 1, 0:h]
                for r in range(1, k):
                    acc = acc + rows[:, o * k + r : o * k + r + 1, r : r + h]
                outs.append(acc)
            out = outs[0] if len(outs) == 1 else torch.cat(outs, 1)
            return out.add_(b.view(1, -1, 1, 1)).relu_().to(x.dtype)
        return _conv2d_relu(x, w, b, (self.padding, self.padding))

    def _paired_conv_relu(self, f: torch.Tensor, i: int) -> torch.Tensor:
        """``_conv_relu`` of a channels-last ``f`` of even width, computed on column pairs.

        With AVX512, oneDNN fills only half of each 16-float vector with Key.Net's 8 output
        channels. On column pairs (16 channels, a 5x3 kernel; a free view of channels-last memory)
        it computes the same sums, plus products with zero weights, 1.5-1.6x faster (AMD EPYC Zen 4).
        """
        w, b = getattr(self, f"paired_w{i}"), getattr(self, f"paired_b{i}")
        return _unpaired(_conv2d_relu(_paired(f), w, b, (self.padding, w.shape[-1] // 2)))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The learned blocks' output for (B,1,h,w) images: float32 (B,F,h,w)."""
        f, w = self.computed(x)
        if f.shape[-1] != w:
            f = f[..., :w].contiguous(memory_format=torch.channels_last)
        return f.float()

    def computed(self, x: torch.Tensor, rows: tuple[int, int] | None = None,
                           slot: int | None = None) -> tuple[torch.Tensor, int]:
        """``features`` as computed, in the compute dtype and, for column pairs of an odd width w, with
        a zero column after the w valid ones; and w. With ``rows`` (r0, r1), only those rows need
        to be right (the others may hold anything); ``slot``: see ``_native_features``."""
        compiled = eager_on_cpu(x) and x.dtype == torch.float32
        if compiled and self.native_conv and torch.get_num_threads() == 1:
            # The kernel runs on the calling thread: where torch would spread a convolution over
            # its threads (tasks disabled), oneDNN's runs instead.
            return self._native_features(x, rows or (0, x.shape[-2]), slot), x.shape[-1]
        pair = compiled and self.pair_columns
        first = 0
        if compiled and self.single_filter:
            # A block of one 5x5 filter (Tiny-Key.Net's) runs in the pass that makes the maps:
            # 250 products a pixel, where oneDNN's convolution (even row-split) wastes most lanes.
            f = single_filter_block(x, self.single_w, self.b0)
            first = 1
        elif compiled:
            # The same maps, computed in one pass and already channels-last, which saves the first
            # convolution a reorder that cost almost as much as the convolution itself. For column
            # pairs an odd width gets a zero column, which plays the next convolution's padding.
            f = handcrafted_maps_channels_last(x, even_width=pair, dtype=self.dtype)
        else:
            f = handcrafted_maps(x, self.dtype)
        w = x.shape[-1]
        for i in range(first, self.num_blocks):
            f = self._paired_conv_relu(f, i) if pair else self._conv_relu(f, i)
            if f.shape[-1] != w:
                f[..., w:] = 0
        return f, w

    def _native_features(self, x: torch.Tensor, rows: tuple[int, int], slot: int | None) -> torch.Tensor:
        """The learned blocks' output (in the compute dtype) for float32 (B,1,h,w) on the CPU by
        ``native.conv5x5_relu8``, right on rows [r0, r1). The maps and each block's output but the
        last are written inside a border of zeros, the padding that the next convolution reads.
        Each block computes only the rows that the right rows depend on: 2 fewer on each side per
        block still to come (rows near a band's inner edge, which feed only rows that are not kept).

        The maps and the blocks' outputs but the last are written into this thread's buffers
        (``thread_buffer``), and with ``slot`` the last one too, under that slot: the caller must
        be done with it before the thread asks for the same slot again."""
        b, _, h, w = x.shape
        maps = thread_buffer("maps", (b, h + 4, w + 4, 10), self.dtype)
        f = handcrafted_maps_channels_last(x, dtype=self.dtype, border=2, out=maps)
        for i in range(self.num_blocks):
            reach = self.padding * (self.num_blocks - 1 - i)
            lo, hi = max(0, rows[0] - reach), min(h, rows[1] + reach)
            last = i == self.num_blocks - 1
            border = 0 if last else 2
            shape = (b, h + 2 * border, w + 2 * border, 8)
            if last and slot is None:
                out = torch.empty(shape, dtype=self.dtype)
            else:
                out = thread_buffer(f"features {slot}" if last else f"block {i % 2}", shape, self.dtype)
            zero_border(out, border)
            out = out.permute(0, 3, 1, 2)
            native.conv5x5_relu8(f[..., lo : hi + 4, :], getattr(self, f"native_w{i}"), getattr(self, f"native_b{i}"),
                                 out[..., border + lo : border + hi, border : border + w])
            f = out
        return f

    def around(self, x: torch.Tensor, s0: int, s1: int, computed: bool = False,
                         slot: int | None = None) -> tuple[torch.Tensor, int]:
        """Features of rows [f0, f1) of ``x``, exact on rows [s0, s1) (the ones near an inner edge
        of the slice are not), and f0; with ``computed``, as ``computed`` returns them
        (compute dtype, maybe a zero column more; ``slot``: see ``_native_features``)."""
        f0, f1 = max(0, s0 - self.feature_halo), min(x.shape[-2], s1 + self.feature_halo)
        part = x[..., f0:f1, :]
        return (self.computed(part, (s0 - f0, s1 - f0), slot)[0] if computed else self.features(part)), f0


class FastKeyNet(nn.Module):
    """Inference-only copy of a ``KeyNet`` (its weights at construction time). (B,1,H,W) -> (B,1,H,W).

    The learned blocks run as ``LearnedBlocks``; this module builds the in-network pyramid, runs
    the blocks and the final convolution in exact row bands, and resamples the levels on the whole
    image's grid.

    Args:
        net: the network.
        dtype: float32 (the same function up to float rounding) or bfloat16: the learned blocks'
            convolutions take bfloat16 maps, weights and features (results differ by about 1e-3 of
            the response's maximum, so some keypoints change; fast only where ``native_bfloat16()``).
    """

    def __init__(self, net: KeyNet, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        if dtype not in COMPUTE_DTYPES.values():
            raise ValueError(f"dtype must be one of {sorted(COMPUTE_DTYPES)}, got {dtype}")
        self.dtype = dtype
        c = net.conf
        self.num_levels = c["num_levels"]
        self.pyramid_factor = c["pyramid_factor"]
        self.min_input_size = net.min_input_size
        self.blocks = LearnedBlocks(net, dtype)
        last = net.last_conv[0]
        nf = c["num_filters"]
        self.last_padding = last.kernel_size[0] // 2
        # (levels, F, 1, k, k): level l's channels of the final kernel, one depthwise filter each
        per_level = last.weight.detach()[0].reshape(self.num_levels, nf, 1, *last.kernel_size)
        self.register_buffer("last_weight", per_level.clone())
        self.register_buffer("last_bias", last.bias.detach().clone())

    def _final_term(self, f: torch.Tensor, level: int) -> torch.Tensor:
        """Level ``level``'s share of the final convolution, (B,1,h,w), from its (upsampled) features."""
        per_channel = F.conv2d(f, self.last_weight[level], padding=self.last_padding, groups=f.shape[1])
        return per_channel.sum(1, keepdim=True)

    def _band(self, pyramid: list[torch.Tensor], r0: int, r1: int, out: torch.Tensor) -> None:
        """Rows [r0, r1) of the response into the same rows of ``out`` (B,1,H,W), the same as from
        the whole image."""
        h, w = pyramid[0].shape[-2:]
        a, z = max(0, r0 - self.last_padding), min(h, r1 + self.last_padding)  # rows the last conv reads
        compiled = eager_on_cpu(pyramid[0])
        # Each level's features around the source rows of rows [a, z) of its resize to the image grid
        # (level 0's is the identity), as indices into those features.
        feats, rows = [], []
        for j, level in enumerate(pyramid):
            i0, i1, weight = _source_rows(a, z, level.shape[-2], h)
            # the features are used up by the end of this band: this thread's buffers can hold them
            f, f0 = self.blocks.around(level, int(i0[0]), int(i1[-1]) + 1, computed=compiled, slot=j)
            feats.append(f)
            rows.append((i0 - f0, i1 - f0, weight))
        if compiled:
            # One compiled pass resizes the levels' features row by row and applies the final
            # convolution, bias and ReLU to them, reading bfloat16 features as they are: faster than
            # the depthwise convolutions, channel sums and stored upsampled features below. A zero
            # column after the valid ones is not read.
            cols = [_source_rows(0, w, level.shape[-1], w) for level in pyramid]
            k = self.last_weight.shape[-1]
            final_response(feats, rows, cols, self.last_weight.reshape(-1, k, k), float(self.last_bias),
                           r0 - a, out[..., r0:r1, :])
            return
        total = None
        for level, (f, (i0, i1, weight)) in enumerate(zip(feats, rows)):
            up = _resize_rows(f, i0, i1, weight, w) if level else f[..., int(i0[0]) : int(i0[-1]) + 1, :]
            term = self._final_term(up, level)[..., r0 - a : r1 - a, :]
            total = term if total is None else total + term
        out[..., r0:r1, :] = total.add_(self.last_bias.view(1, 1, 1, 1)).relu_()

    def _whole(self, pyramid: list[torch.Tensor]) -> torch.Tensor:
        """The response before bias and ReLU in one piece with ``F.interpolate``: the traceable form
        that ONNX export records (H and W stay symbolic)."""
        size = (pyramid[0].shape[-2], pyramid[0].shape[-1])
        out = self._final_term(self.blocks.features(pyramid[0]), 0)
        for level in range(1, self.num_levels):
            f = F.interpolate(self.blocks.features(pyramid[level]), size=size, mode="bilinear", align_corners=False)
            out = out + self._final_term(f, level)
        return out

    def forward(self, x: torch.Tensor, band_pixels: int | None = None) -> torch.Tensor:
        """The response (B,1,H,W) of images (B,1,H,W).

        Args:
            band_pixels: compute in row bands of at most this many pixels (bounds memory). Bands
                are never larger than ``_CACHE_BAND_PIXELS`` anyway (speed), and the image is cut
                into a multiple of ``keynet.parallel.concurrency()`` bands, which run in parallel.
                Bands give the same response as the whole image: each computes its features with
                the rows of context they depend on, and resamples the in-network levels on the whole
                image's grid.
        """
        pyramid = [x]
        for _ in range(1, self.num_levels):
            p = pyramid[-1]
            pyramid.append(pyrdown(p, (downsampled_side(p.shape[-2], self.pyramid_factor),
                                       downsampled_side(p.shape[-1], self.pyramid_factor))))
        if torch.jit.is_tracing():
            return self._whole(pyramid).add_(self.last_bias.view(1, 1, 1, 1)).relu_()
        out = x.new_empty(x.shape, dtype=torch.float32)
        bands = _row_bands(*x.shape[-2:], band_pixels, concurrency())
        run_tasks([partial(self._band, pyramid, r0, r1, out) for r0, r1 in bands])
        return out


# Bands are at most this many pixels even when memory would allow more: a band's working set then
# stays in the caches and its buffers are reused, which made detection on a 1024x768 image about
# 1.3-1.4x faster, in development measurements on a 2-core AVX-512 VM, than whole 1.6 Mpx levels.
_CACHE_BAND_PIXELS = 2**18
# Each band recomputes about 2 * (feature_halo + 2) rows of context (20 for Key.Net), which should
# stay a small part of its work: bands are at least this many rows unless the image is smaller.
_MIN_BAND_ROWS = 64


def _row_bands(h: int, w: int, band_pixels: int | None, parts: int) -> list[tuple[int, int]]:
    """Row ranges [r0, r1) covering ``h`` rows: at most ``band_pixels`` (and ``_CACHE_BAND_PIXELS``)
    pixels each, of equal heights, and ``_MIN_BAND_ROWS`` rows or more unless the pixel limit asks for
    less; with ``parts`` > 1 a multiple of ``parts`` bands, where the image has ``parts`` times
    ``_MIN_BAND_ROWS`` rows."""
    limit = _CACHE_BAND_PIXELS if band_pixels is None else min(band_pixels, _CACHE_BAND_PIXELS)
    rows = max(_MIN_BAND_ROWS, limit // max(w, 1))
    count = -(-h // rows)
    if parts > 1 and h >= parts * _MIN_BAND_ROWS:
        # a multiple of `parts` bands of equal height, so that no thread waits for a last band
        count = -(-count // parts) * parts
    rows = -(-h // count)  # equal heights
    return [(r0, min(h, r0 + rows)) for r0 in range(0, h, rows)]


# A detection asks for the same few dozen (a, z, src_h, dst_h) again and again (bounded: an entry
# holds up to 20 bytes per row or column of a level).
@lru_cache(maxsize=256)
def _source_rows(a: int, z: int, src_h: int, dst_h: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For rows [a, z) of a bilinear resize (align_corners=False) from ``src_h`` to ``dst_h`` rows: the
    two source rows of each and the weight of the second, computed in float32 as ATen does. Cached:
    the tensors are shared, and must not be modified."""
    scale = torch.tensor(src_h, dtype=torch.float32) / dst_h
    src = ((torch.arange(a, z, dtype=torch.float32) + 0.5) * scale - 0.5).clamp_(min=0)
    i0 = src.long()
    return i0, (i0 + 1).clamp_(max=src_h - 1), src - i0


def _resize_rows(f: torch.Tensor, i0: torch.Tensor, i1: torch.Tensor, weight: torch.Tensor, w: int) -> torch.Tensor:
    """Bilinear resize of (B,C,h,wf) ``f`` to len(i0) rows (given by ``_source_rows``) and ``w`` columns."""
    i0, i1, weight = i0.to(f.device), i1.to(f.device), weight.to(f.device, f.dtype)
    rows_last = f.permute(0, 2, 3, 1)  # channels-last memory as a contiguous (B,h,wf,C) view
    v = torch.lerp(rows_last.index_select(1, i0), rows_last.index_select(1, i1), weight.view(1, -1, 1, 1))
    v = v.permute(0, 3, 1, 2)
    # rows already at their size: F.interpolate's row weights are exactly 1 and 0
    return F.interpolate(v, size=(v.shape[-2], w), mode="bilinear", align_corners=False)
