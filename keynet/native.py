"""keynet's hand-written convolution kernel (``csrc/conv5x5.c``), and the CPUs it is used on.

oneDNN runs Key.Net's 8-channel convolutions with AVX-512 in 16-float vectors: either half of each
vector multiplies zeros, or (``inference._pair_columns``) two columns share a vector and 17% of the
products have zero weights. The kernel computes one pixel's 8 channels in one 8-float vector, with
no zero products. On AMD Zen 4, whose AVX-512 units execute a 16-float operation as two 8-float
halves, 8-float vectors do the same work per cycle, so the kernel is faster there (about 1.1x
per convolution in development measurements); on CPUs with full-width AVX-512 units oneDNN's
16-float vectors are faster, and on others the kernel's instructions do not exist. The choice
depends only on the CPU, so a machine always computes the same results.

The library is built by ``pip install`` (``setup.py``) where the compiler targets x86-64, and it is
optional: without it keynet runs the same network with oneDNN's convolutions.
"""

from __future__ import annotations

import ctypes
from functools import lru_cache
from pathlib import Path
from typing import Callable

import torch


def _load() -> Callable[..., None] | None:
    try:
        from . import _conv5x5
    except ImportError:
        return None
    fn = ctypes.CDLL(_conv5x5.__file__).keynet_conv5x5_relu8
    fn.argtypes = [ctypes.c_void_p, ctypes.c_long, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p,
                   ctypes.c_void_p, ctypes.c_void_p, ctypes.c_long]
    fn.restype = None
    return fn


_KERNEL = _load()


def is_zen4(cpuinfo: str) -> bool:
    """Whether Linux's /proc/cpuinfo text describes an AMD family 19h CPU (Zen 3 and Zen 4) with
    AVX-512, which only Zen 4 has."""
    first = cpuinfo.split("\n\n")[0]  # the first processor's fields
    fields = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in first.splitlines() if ":" in line)}
    return (fields.get("vendor_id") == "AuthenticAMD" and fields.get("cpu family") == "25"
            and {"avx512f", "avx512vl", "fma"} <= set(fields.get("flags", "").split()))


@lru_cache(maxsize=None)
def _this_cpu_is_zen4() -> bool:
    try:
        return is_zen4(Path("/proc/cpuinfo").read_text())
    except OSError:
        return False


def kernel_runs() -> bool:
    """Whether ``conv5x5_relu8`` is built and this CPU has its instructions (AVX-512)."""
    return _KERNEL is not None and torch.backends.cpu.get_cpu_capability() == "AVX512"


def kernel_applies() -> bool:
    """Whether ``conv5x5_relu8`` runs here and is the faster convolution on this CPU (see above)."""
    return kernel_runs() and _this_cpu_is_zen4()


def conv5x5_relu8(src: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, dst: torch.Tensor) -> None:
    """dst = relu(bias + conv2d(src without its border, weight, zero padding 2)), written in place.

    Args:
        src: (B, C, h + 4, w + 4) float32 whose rows are channels-last (each pixel's C channels
            contiguous, pixels adjacent; e.g. rows of a channels-last tensor): the input with a
            border of 2 pixels on each side that holds zeros (the padding).
        weight: (5, 5, C, 8) float32, contiguous: ``conv_weight.permute(2, 3, 1, 0)``.
        bias: (8,) float32.
        dst: (B, 8, h, w) float32 with channels-last rows likewise (e.g. the interior of a larger
            channels-last tensor).
    """
    if not kernel_runs():
        raise RuntimeError("keynet's native kernel is not built, or this CPU lacks AVX-512 (see keynet/native.py)")
    b, c, hp, wp = src.shape
    h, w = hp - 4, wp - 4
    if dst.shape != (b, 8, h, w) or weight.shape != (5, 5, c, 8) or bias.shape != (8,):
        raise ValueError(f"shapes do not fit: src {tuple(src.shape)}, weight {tuple(weight.shape)}, "
                         f"bias {tuple(bias.shape)}, dst {tuple(dst.shape)}")
    if any(t.dtype != torch.float32 or t.device.type != "cpu" for t in (src, weight, bias, dst)):
        raise ValueError("conv5x5_relu8 takes float32 CPU tensors")
    if not (src.stride(1) == 1 and src.stride(3) == c and dst.stride(1) == 1 and dst.stride(3) == 8
            and weight.is_contiguous() and bias.is_contiguous()):
        raise ValueError("conv5x5_relu8 takes src and dst with channels-last rows (each pixel's channels "
                         "contiguous, pixels adjacent) and contiguous weight and bias")
    for i in range(b):
        _KERNEL(src[i].data_ptr(), src.stride(2), h, w, c, weight.data_ptr(), bias.data_ptr(), dst[i].data_ptr(),
                dst.stride(2))
