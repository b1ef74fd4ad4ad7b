import pytest
import torch
import torch.nn.functional as F

from keynet.inference import (
    MAP_SCALES, FastKeyNet, _row_bands, _source_rows, downsampled_side, handcrafted_maps, pyrdown as fast_pyrdown, upsampled_side,
)
from keynet import kernels
from keynet.kernels import final_response, handcrafted_maps_channels_last, single_filter_block
from keynet.model import HandcraftedBlock, build_model, pyrdown
from keynet.weights import load_model

from .conftest import read_gray


def randomise_batchnorm(net):
    g = torch.Generator().manual_seed(0)
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, generator=g)
            m.bias.data.uniform_(0.0, 0.1, generator=g)
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return net.eval()


def test_separable_filters_equal_the_convolutions():
    x = torch.rand(2, 1, 57, 71)
    scales = torch.tensor(MAP_SCALES)[:, None, None]
    torch.testing.assert_close(handcrafted_maps(x) / scales, HandcraftedBlock()(x), atol=1e-6, rtol=1e-5)
    for factor in (1.2, 2**0.5):
        size = (int(57 / factor), int(71 / factor))
        torch.testing.assert_close(fast_pyrdown(x, size), pyrdown(x, factor), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("shape", [(2, 1, 57, 71), (1, 1, 1, 3), (1, 1, 4, 1), (1, 1, 70, 2), (1, 1, 2, 2)])
def test_compiled_maps_equal_the_torch_maps_bit_for_bit(shape):
    x = torch.rand(shape)
    maps = handcrafted_maps_channels_last(x)
    assert maps.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(maps, handcrafted_maps(x))


@pytest.mark.parametrize("shape", [(2, 1, 57, 71), (1, 1, 3, 4), (1, 1, 1, 6), (1, 1, 40, 1), (1, 1, 70, 33)])
def test_compiled_single_filter_block_equals_conv_of_the_maps(shape):
    g = torch.Generator().manual_seed(shape[-1])
    x = torch.rand(shape, generator=g)
    w, b = torch.randn(1, 10, 5, 5, generator=g) / torch.tensor(MAP_SCALES)[:, None, None], torch.tensor([0.05])
    ref = F.conv2d(handcrafted_maps(x), w, b, padding=2).relu()
    ours = single_filter_block(x, w, b)
    assert (ref > 0).any() and (ref == 0).any()
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5 * ref.abs().max().item())


@pytest.mark.parametrize("shape, factor", [((2, 1, 57, 71), 1.2), ((1, 1, 3, 4), 1.2), ((1, 1, 300, 7), 2**0.5)])
def test_compiled_pyrdown_equals_the_model_pyrdown(shape, factor):
    x = torch.rand(shape)
    size = (downsampled_side(shape[2], factor), downsampled_side(shape[3], factor))
    rows, cols = _source_rows(0, size[0], shape[2], size[0]), _source_rows(0, size[1], shape[3], size[1])
    torch.testing.assert_close(kernels.pyrdown(x, rows, cols), pyrdown(x, factor), rtol=0, atol=1e-5)


@pytest.mark.parametrize("channels, k", [(8, 5), (1, 3)])
@pytest.mark.parametrize("o0, count", [(0, 37), (3, 10), (30, 7)])
def test_compiled_final_convolution_equals_upsampling_and_conv2d(channels, k, o0, count):
    g = torch.Generator().manual_seed(channels + o0)
    h, w = 37, 45
    feats = [torch.rand(2, channels, *size, generator=g).contiguous(memory_format=torch.channels_last)
             for size in ((h, w), (30, 37), (25, 31))]
    weight = torch.randn(3 * channels, k, k, generator=g)
    bias = -0.5
    upsampled = [F.interpolate(f, size=(h, w), mode="bilinear", align_corners=False) for f in feats]
    ref = F.conv2d(torch.cat(upsampled, 1), weight[None], torch.tensor([bias]), padding=k // 2).relu()
    ref = ref[:, :, o0 : o0 + count]
    assert (ref > 0).any() and (ref == 0).any()
    rows = [_source_rows(0, h, f.shape[-2], h) for f in feats]
    cols = [_source_rows(0, w, f.shape[-1], w) for f in feats]
    assert torch.equal(rows[0][0], torch.arange(h)) and not rows[0][2].any()  # level 0 as it is

    def final(feats: list) -> torch.Tensor:
        # into rows of a larger tensor, as a band of the image is written
        out = torch.full((2, 1, count + 5, w), float("nan"))
        final_response(feats, rows, cols, weight, bias, o0, out[:, :, 2 : 2 + count])
        assert out[:, :, :2].isnan().all() and out[:, :, 2 + count :].isnan().all()
        return out[:, :, 2 : 2 + count]

    ours = final(feats)
    # ATen may round a source coordinate (up to 45 here) differently by an ulp; sums of up to 600 terms
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5 * ref.abs().max().item())
    # bfloat16 features are read exactly: the same as their float32 values
    rounded = [f.bfloat16() for f in feats]
    assert torch.equal(final(rounded), final([f.float() for f in rounded]))
    # a column after the output width (column pairs of an odd width) is not read
    wider = torch.cat([feats[0], torch.full_like(feats[0][..., :1], 1e6)], -1).contiguous(memory_format=torch.channels_last)
    assert torch.equal(final([wider, *feats[1:]]), ours)


def test_integer_resized_sides_equal_the_float_rule():
    sides = range(1, 40001)
    for factor in (1.2, 2**0.5):
        assert all(downsampled_side(side, factor) == int(float(side) / factor) for side in sides)
    for factor in (2**0.5, 2**0.5 * 2**0.5):
        assert all(upsampled_side(side, factor) == int(side * factor) for side in sides)


@pytest.mark.parametrize("name", ["keynet", "tiny"])
def test_fast_network_equals_the_network(name):
    torch.manual_seed(0)
    net = randomise_batchnorm(build_model(name))
    x = torch.rand(2, 1, 83, 97)
    with torch.no_grad():
        a, b = net(x), FastKeyNet(net)(x)
    assert (a > 0).float().mean() > 0.05  # a live response, not an all-zero map
    assert (a - b).abs().max() <= 1e-5 * a.abs().max()


def test_fast_network_on_a_real_image(data_dir, reference_weights):
    net = load_model(reference_weights)
    x = read_gray(data_dir / "oxford_affine/graf/img1.png")
    with torch.no_grad():
        a, b = net(x), FastKeyNet(net)(x)
    assert (a - b).abs().max() <= 1e-5 * a.max()


@pytest.mark.parametrize("name", ["keynet", "tiny"])
def test_row_bands_give_the_whole_image_response(name):
    """Bands of any height, including ones that cut through the in-network levels' resampling
    cells, give the whole image's response up to float rounding."""
    torch.manual_seed(1)
    net = randomise_batchnorm(build_model(name))
    fast = FastKeyNet(net)
    x = torch.rand(1, 1, 301, 90)
    with torch.no_grad():
        whole, plain = fast(x, band_pixels=10**9), net(x)
        for rows in (64, 100, 150):
            banded = fast(x, band_pixels=rows * 90)
            assert (banded - whole).abs().max() <= 1e-6 * whole.abs().max(), rows
    assert (whole - plain).abs().max() <= 1e-5 * plain.abs().max()
    traced = torch.jit.trace(fast, x)  # the F.interpolate form that ONNX export records
    assert (traced(x) - whole).abs().max() <= 1e-5 * whole.abs().max()


@pytest.mark.parametrize("name", ["keynet", "tiny"])
def test_uncompiled_bands_give_the_network_response(name, monkeypatch):
    """The PyTorch form of every pass (what a GPU runs): bands give the plain network's response."""
    from keynet import inference

    torch.manual_seed(2)
    net = randomise_batchnorm(build_model(name))
    x = torch.rand(1, 1, 150, 90)
    with torch.no_grad():
        plain = net(x)
        monkeypatch.setattr(inference, "eager_on_cpu", lambda t: False)
        banded = FastKeyNet(net)(x, band_pixels=64 * 90)
    assert (banded - plain).abs().max() <= 1e-5 * plain.abs().max()


def test_row_bands_cover_the_rows_once():
    for h, w, pixels, parts in [(600, 600, None, 1), (600, 600, None, 2), (601, 50, 1000, 2), (100, 10, None, 4),
                                (5000, 4000, 2**22, 1)]:
        bands = _row_bands(h, w, pixels, parts)
        assert bands[0][0] == 0 and bands[-1][1] == h
        assert all(a1 == b0 for (_, a1), (b0, _) in zip(bands, bands[1:]))
        limit = min(pixels or 2**18, 2**18)
        assert all(r1 - r0 <= max(64, limit // w) for r0, r1 in bands)
    assert len(_row_bands(500, 500, None, 1)) == 1  # fits the cache limit
    assert len(_row_bands(500, 500, None, 2)) == 2  # one band per thread
    assert len(_row_bands(100, 10, None, 4)) == 1  # too few rows to be worth splitting
    assert len(_row_bands(64 * 3, 10**5, None, 1)) == 3  # very wide: bands keep 64 rows


def test_bfloat16_maps_are_the_float32_maps_rounded():
    x = torch.rand(2, 1, 40, 50)
    rounded = handcrafted_maps(x).to(torch.bfloat16)
    assert torch.equal(handcrafted_maps(x, torch.bfloat16), rounded)
    compiled = handcrafted_maps_channels_last(x, dtype=torch.bfloat16)
    assert compiled.dtype == torch.bfloat16 and torch.equal(compiled, rounded)


@pytest.mark.parametrize("name", ["keynet", "tiny"])
def test_bfloat16_network_is_close_to_float32(name, data_dir):
    net = load_model(None, name)  # the shipped weights
    x = read_gray(data_dir / "oxford_affine/boat/img1.png")[..., :200, :300]
    with torch.no_grad():
        a, b = FastKeyNet(net)(x), FastKeyNet(net, torch.bfloat16)(x)
    assert b.dtype == torch.float32
    err = (a - b).abs().max() / a.abs().max()
    # bfloat16 keeps 8 significant bits: visibly not float32, but within a few 1e-3 of the maximum
    assert 1e-5 < err < 1e-2, err.item()


def test_unknown_compute_dtype_is_refused():
    with pytest.raises(ValueError, match="dtype must be one of"):
        FastKeyNet(build_model("keynet"), torch.float16)


@pytest.mark.parametrize("width", [97, 96])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_column_pairs_give_the_plain_convolutions(width, dtype):
    """The blocks on column pairs (``_pair_columns``; an odd width gets a zero column) compute the
    same sums as the plain convolutions."""
    torch.manual_seed(2)
    fast = FastKeyNet(randomise_batchnorm(build_model("keynet")), dtype)
    x = torch.rand(2, 1, 41, width)
    fast.blocks.native_conv = False  # the column pairs are the alternative to keynet's own kernel
    with torch.no_grad():
        fast.blocks.pair_columns = False
        plain = fast.blocks.features(x)
        fast.blocks.pair_columns = True
        paired = fast.blocks.features(x)
    assert paired.shape == plain.shape and paired.is_contiguous(memory_format=torch.channels_last)
    tol = 1e-6 if dtype == torch.float32 else 1e-2  # bfloat16 features are rounded to 8 bits
    assert (paired - plain).abs().max() <= tol * plain.abs().max()


def test_thread_buffers_are_kept_per_thread_and_name():
    from concurrent.futures import ThreadPoolExecutor

    from keynet.inference import release_thread_buffers, thread_buffer

    release_thread_buffers()
    a = thread_buffer("test", (4, 5), torch.float32)
    assert thread_buffer("test", (2, 10), torch.float32).data_ptr() == a.data_ptr()  # the same memory again
    assert thread_buffer("test", (3, 2), torch.bfloat16).data_ptr() == a.data_ptr()  # smaller, other dtype
    assert thread_buffer("other", (4, 5), torch.float32).data_ptr() != a.data_ptr()
    bigger = thread_buffer("test", (100, 5), torch.float32)
    assert bigger.shape == (100, 5) and bigger.is_contiguous()
    import threading

    from keynet import inference

    with ThreadPoolExecutor(1) as pool:
        elsewhere, worker = pool.submit(lambda: (thread_buffer("test", (100, 5), torch.float32),
                                                 threading.get_ident())).result()
    assert elsewhere.data_ptr() != bigger.data_ptr()
    assert any(key[0] == worker for key in inference._thread_buffers)
    thread_buffer("new", (3,), torch.float32)  # a new buffer: those of ended threads are dropped
    assert not any(key[0] == worker for key in inference._thread_buffers)
    release_thread_buffers()
    assert not inference._thread_buffers
