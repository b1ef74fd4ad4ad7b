import pytest
import torch
import torch.nn.functional as F

from keynet import inference, native
from keynet.inference import FastKeyNet
from keynet.model import build_model

from .test_inference import randomise_batchnorm

needs_kernel = pytest.mark.skipif(not native.kernel_runs(), reason="native kernel not built or no AVX-512")


def _padded(x: torch.Tensor) -> torch.Tensor:
    return F.pad(x, (2, 2, 2, 2)).contiguous(memory_format=torch.channels_last)


@needs_kernel
@pytest.mark.parametrize("channels", [8, 10, 16])
@pytest.mark.parametrize("h, w", [(1, 1), (3, 2), (5, 3), (6, 4), (7, 23), (4, 24), (9, 25), (3, 50), (2, 71)])
def test_kernel_equals_conv2d_relu(channels, h, w):
    """Every width path: rows narrower than a block, 4-pixel blocks, 24-pixel blocks, and a last
    block that overlaps the one before it."""
    g = torch.Generator().manual_seed(h * 100 + w)
    x = torch.randn(2, channels, h, w, generator=g)
    weight, bias = torch.randn(8, channels, 5, 5, generator=g), torch.randn(8, generator=g)
    out = torch.full((2, h, w, 8), float("nan")).permute(0, 3, 1, 2)
    native.conv5x5_relu8(_padded(x), native.pack_weight(weight, torch.float32), bias, out)
    expected = F.conv2d(x, weight, bias, padding=2).relu()
    torch.testing.assert_close(out, expected, atol=1e-5 * expected.abs().max().item(), rtol=1e-5)


@pytest.mark.skipif(not native.kernel_runs(torch.bfloat16), reason="no native bfloat16 kernel or no AVX512-BF16")
@pytest.mark.parametrize("channels", [8, 10, 16])
@pytest.mark.parametrize("h, w", [(2, 1), (3, 3), (6, 4), (5, 29), (3, 48)])
def test_bfloat16_kernel_equals_conv2d_of_the_rounded_values(channels, h, w):
    """The products of bfloat16 inputs and weights summed in float32, rounded once to bfloat16."""
    g = torch.Generator().manual_seed(h * 100 + w)
    x = torch.randn(2, channels, h, w, generator=g).bfloat16()
    weight, bias = torch.randn(8, channels, 5, 5, generator=g), torch.randn(8, generator=g)
    out = torch.full((2, h, w, 8), float("nan"), dtype=torch.bfloat16).permute(0, 3, 1, 2)
    native.conv5x5_relu8(_padded(x), native.pack_weight(weight, torch.bfloat16), bias, out)
    expected = F.conv2d(x.float(), weight.bfloat16().float(), bias, padding=2).relu()
    # one rounding to bfloat16 (8 bits), after float32 sums in another order
    torch.testing.assert_close(out.float(), expected, atol=1e-5 * expected.abs().max().item(), rtol=2**-8)


@needs_kernel
def test_kernel_writes_only_inside_a_strided_destination():
    """Writing into the interior of a larger buffer (the next convolution's zero border) leaves the
    border as it was."""
    x = torch.randn(1, 8, 6, 30)
    weight, bias = torch.randn(8, 8, 5, 5), torch.randn(8)
    buffer = torch.full((1, 10, 34, 8), -7.0).permute(0, 3, 1, 2)
    native.conv5x5_relu8(_padded(x), native.pack_weight(weight, torch.float32), bias, buffer[..., 2:-2, 2:-2])
    expected = F.conv2d(x, weight, bias, padding=2).relu()
    torch.testing.assert_close(buffer[..., 2:-2, 2:-2], expected, atol=1e-4, rtol=1e-5)
    border = torch.ones(10, 34, dtype=torch.bool)
    border[2:-2, 2:-2] = False
    assert (buffer[0][:, border] == -7.0).all()


@needs_kernel
def test_kernel_refuses_what_does_not_fit():
    src, weight, bias = _padded(torch.rand(1, 8, 6, 6)), torch.rand(5, 5, 8, 8), torch.rand(8)
    dst = torch.empty(1, 8, 6, 6).contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="shapes"):
        native.conv5x5_relu8(src, weight, bias, torch.empty(1, 8, 6, 7).contiguous(memory_format=torch.channels_last))
    with pytest.raises(ValueError, match="channels-last"):
        native.conv5x5_relu8(src, weight, bias, torch.empty(1, 8, 6, 6))
    with pytest.raises(ValueError, match="float32"):
        native.conv5x5_relu8(src, weight, bias.double(), dst)
    with pytest.raises(ValueError, match="channels-last"):  # rows of planar (NCHW) memory
        native.conv5x5_relu8(F.pad(torch.rand(1, 8, 6, 6), (2, 2, 2, 2)), weight, bias, dst)
    wide = _padded(torch.rand(1, 17, 6, 6))  # more channels than the kernels hold
    with pytest.raises(ValueError, match="shapes"):
        native.conv5x5_relu8(wide, torch.rand(5, 5, 17, 8), bias, dst)
    if native.kernel_runs(torch.bfloat16):
        odd = _padded(torch.rand(1, 9, 6, 6)).bfloat16()
        with pytest.raises(ValueError, match="shapes"):  # bfloat16 takes input channels in pairs
            native.conv5x5_relu8(odd, torch.rand(5, 5, 4, 8, 2).bfloat16(), bias, dst.bfloat16())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_network_on_the_kernel_equals_the_network(dtype, monkeypatch):
    """The whole network with its learned blocks in the kernel, in row bands and a batch of two."""
    if not native.kernel_runs(dtype):
        pytest.skip(f"no native {dtype} kernel here")
    calls = []
    kernel = native.conv5x5_relu8
    monkeypatch.setattr(native, "conv5x5_relu8", lambda *args: calls.append(1) or kernel(*args))
    torch.manual_seed(3)
    net = randomise_batchnorm(build_model("keynet"))
    fast = FastKeyNet(net, dtype)
    fast.blocks.native_conv = True
    x = torch.rand(2, 1, 150, 77)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the kernel serves single-threaded convolutions only
    try:
        with torch.no_grad():
            plain = net(x)
            fast(torch.rand(2, 1, 160, 80), band_pixels=64 * 80)  # fills this thread's buffers
            for buffer in inference._thread_buffers.values():  # stale values must never be read
                buffer.view(torch.float32 if buffer.numel() % 4 == 0 else torch.bfloat16).fill_(float("nan"))
            calls.clear()
            banded = fast(x, band_pixels=64 * 77)
    finally:
        torch.set_num_threads(threads)
    assert len(calls) == 3 * 3 * 3  # blocks x levels x bands
    assert (plain > 0).float().mean() > 0.05
    tol = 1e-5 if dtype == torch.float32 else 1e-2  # bfloat16 maps and features have 8 bits
    assert (banded - plain).abs().max() <= tol * plain.abs().max()


def test_zen4_is_told_from_cpuinfo():
    zen4 = "vendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\nflags\t\t: fpu sse avx2 fma avx512f avx512vl\n"
    zen3 = "vendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 1\nflags\t\t: fpu sse avx2 fma\n"
    intel = ("vendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 143\n"
             "flags\t\t: fpu sse avx2 fma avx512f avx512vl amx_tile\n")
    assert native.is_zen4(zen4 + "\n" + zen4)
    assert not native.is_zen4(zen3)
    assert not native.is_zen4(intel)
    assert not native.is_zen4("")
