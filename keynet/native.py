"""keynet's hand-written convolution kernels (``csrc/conv5x5.c``), and the CPUs they are used on.

oneDNN runs Key.Net's 8-channel convolutions with AVX-512 in 16-float vectors: either half of each
vector multiplies zeros, or (``inference._pair_columns``) two columns share a vector and 17% of the
products have zero weights. The kernels compute one pixel's 8 channels in one 8-float vector, with
no zero products, in float32 or (with AVX512-BF16) on bfloat16 maps and features. On AMD Zen 4,
whose AVX-512 units execute a 16-float operation as two 8-float halves, 8-float vectors do the
same work per cycle, so the kernels are faster there (1.1-1.2x per convolution in development
measurements); on CPUs with full-width AVX-512 units oneDNN's 16-float vectors are faster, and on
others the kernels' instructions do not exist. The kernels run on the calling thread, so
``FastKeyNet`` uses them where a convolution runs on one torch thread (keynet's band and level
tasks always do) and oneDNN's threaded convolution otherwise (``parallel.tasks_disabled()``, or a
single band on several threads). The choice depends on the CPU and on those settings, not on
timing: the same machine and settings always compute the same results; the two paths differ by
float rounding (about 1e-6 of the response's maximum in float32, 1e-2 in bfloat16).

The library is built by ``pip install`` (``setup.py``) where the compiler targets x86-64, and it is
optional: without it keynet runs the same network with oneDNN's convolutions.
"""

from __future__ import annotations

import ctypes
import platform
from functools import lru_cache
from pathlib import Path
from typing import Callable

import torch

_ARGTYPES = [ctypes.c_void_p, ctypes.c_long, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p,
             ctypes.c_void_p, ctypes.c_void_p, ctypes.c_long]
_MAX_CHANNELS = 16  # the kernels' MAX_CHANNELS


def _load() -> dict[torch.dtype, Callable[..., None]]:
    try:
        from . import _conv5x5

        lib = ctypes.CDLL(_conv5x5.__file__)
        kernels = {torch.float32: lib.keynet_conv5x5_relu8, torch.bfloat16: lib.keynet_conv5x5_relu8_bf16}
    except (ImportError, OSError, AttributeError):  # not built, not loadable, or an older build
        return {}
    for fn in kernels.values():
        fn.argtypes, fn.restype = _ARGTYPES, None
    return kernels


_KERNELS = _load()


def _cpu_fields(cpuinfo: str) -> dict[str, str]:
    """The first processor's fields in Linux's /proc/cpuinfo text."""
    first = cpuinfo.split("\n\n")[0]
    return {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in first.splitlines() if ":" in line)}


def is_zen4(cpuinfo: str) -> bool:
    """Whether /proc/cpuinfo text describes an AMD family 19h CPU (Zen 3 and Zen 4) with AVX-512,
    which only Zen 4 has."""
    fields = _cpu_fields(cpuinfo)
    return (fields.get("vendor_id") == "AuthenticAMD" and fields.get("cpu family") == "25"
            and {"avx512f", "avx512vl"} <= set(fields.get("flags", "").split()))


@lru_cache(maxsize=None)
def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_description() -> str:
    """The CPU as speed figures should name it, e.g. ``AMD EPYC (family 25, model 17; AVX512, AVX512-BF16)``:
    the model name, the family and model numbers (a VM often reports only a brand) and the vector
    extensions that decide keynet's code paths; the architecture where /proc/cpuinfo is missing."""
    fields = _cpu_fields(_cpuinfo())
    if "model name" not in fields:
        return platform.processor() or platform.machine()
    flags = _cpu_flags()
    isa = [name for flag, name in (("avx2", "AVX2"), ("avx512f", "AVX512"), ("avx512_bf16", "AVX512-BF16"),
                                   ("amx_tile", "AMX")) if flag in flags]
    return (f"{fields['model name']} (family {fields.get('cpu family', '?')}, model {fields.get('model', '?')}"
            f"; {', '.join(isa) or 'no AVX2'})")


@lru_cache(maxsize=None)
def _cpu_flags() -> frozenset[str]:
    return frozenset(_cpu_fields(_cpuinfo()).get("flags", "").split())


def kernel_runs(dtype: torch.dtype = torch.float32) -> bool:
    """Whether the kernel for ``dtype`` is built and this CPU has the instructions the library was
    compiled for (AVX-512 F, VL, BW, which the BF16 option brings, and AVX512-BF16)."""
    return dtype in _KERNELS and {"avx512f", "avx512vl", "avx512bw", "avx512_bf16", "fma"} <= _cpu_flags()


def kernel_applies(dtype: torch.dtype = torch.float32) -> bool:
    """Whether the kernel for ``dtype`` runs here and is the faster convolution on this CPU (above)."""
    return kernel_runs(dtype) and is_zen4(_cpuinfo())


def pack_weight(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A (8, C, 5, 5) convolution weight in the layout the kernel for ``dtype`` reads: float32
    (5, 5, C, 8); bfloat16 (5, 5, C / 2, 8, 2), input channels in pairs (C even)."""
    w = weight.permute(2, 3, 1, 0)  # (5, 5, C, 8)
    if dtype == torch.bfloat16:
        w = w.reshape(5, 5, -1, 2, 8).transpose(3, 4)
    return w.to(dtype).contiguous()


def conv5x5_relu8(src: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, dst: torch.Tensor) -> None:
    """dst = relu(bias + conv2d(src without its border, weight, zero padding 2)), written in place;
    in bfloat16 the products are summed in float32 and the result rounded to bfloat16.

    Args:
        src: (B, C, h + 4, w + 4) float32 or bfloat16 whose rows are channels-last (each pixel's C
            channels contiguous, pixels adjacent; e.g. rows of a channels-last tensor): the input
            with a border of 2 pixels on each side that holds zeros (the padding). C <= 16, even
            for bfloat16.
        weight: ``pack_weight(conv_weight, src.dtype)``.
        bias: (8,) float32.
        dst: (B, 8, h, w) of src's dtype with channels-last rows likewise (e.g. the interior of a
            larger channels-last tensor).
    """
    dtype = src.dtype
    if not kernel_runs(dtype):
        raise RuntimeError(f"keynet's native {dtype} kernel is not built, or this CPU lacks its "
                           "instructions (see keynet/native.py)")
    b, c, hp, wp = src.shape
    h, w = hp - 4, wp - 4
    packed = (5, 5, c // 2, 8, 2) if dtype == torch.bfloat16 else (5, 5, c, 8)
    if (dst.shape != (b, 8, h, w) or weight.shape != packed or bias.shape != (8,) or c > _MAX_CHANNELS
            or (dtype == torch.bfloat16 and c % 2)):
        raise ValueError(f"shapes do not fit: src {tuple(src.shape)}, weight {tuple(weight.shape)}, "
                         f"bias {tuple(bias.shape)}, dst {tuple(dst.shape)}")
    if (dst.dtype, weight.dtype, bias.dtype) != (dtype, dtype, torch.float32) or any(
            t.device.type != "cpu" for t in (src, weight, bias, dst)):
        raise ValueError("conv5x5_relu8 takes CPU tensors: src, weight and dst float32 or all bfloat16, "
                         "bias float32")
    if not (src.stride(1) == 1 and src.stride(3) == c and dst.stride(1) == 1 and dst.stride(3) == 8
            and weight.is_contiguous() and bias.is_contiguous()):
        raise ValueError("conv5x5_relu8 takes src and dst with channels-last rows (each pixel's channels "
                         "contiguous, pixels adjacent) and contiguous weight and bias")
    kernel = _KERNELS[dtype]
    for i in range(b):
        kernel(src[i].data_ptr(), src.stride(2), h, w, c, weight.data_ptr(), bias.data_ptr(), dst[i].data_ptr(),
               dst.stride(2))
