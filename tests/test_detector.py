import kornia.feature as KF
import numpy as np
import pytest
import torch
from torch import nn

from keynet import KeyNetDetector
from keynet.detector import strict_maxima
from keynet.kernels import local_maxima
from keynet.weights import load_model, load_state_dict_file

from .conftest import Identity, found_in, read_gray


def blob_image(h, w, centres, sigma=3.0):
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.zeros((h, w))
    for cx, cy in centres:
        img += np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma**2))
    return (img / img.max()).astype(np.float32)


@pytest.fixture(scope="module")
def ref_detector(reference_weights):
    return KeyNetDetector(weights=reference_weights, compat="kornia")


def brute_force_strict_maxima(a, size):
    r = size // 2
    h, w = a.shape
    out = np.zeros_like(a, dtype=bool)
    for i in range(h):
        for j in range(w):
            win = a[max(0, i - r) : i + r + 1, max(0, j - r) : j + r + 1].copy()
            centre = a[i, j]
            win[min(i, r), min(j, r)] = -np.inf  # exclude the centre itself
            out[i, j] = centre > win.max()
    return out


@pytest.mark.parametrize("size", [1, 3, 5, 9, 15])
def test_strict_maxima_matches_brute_force(size):
    g = torch.Generator().manual_seed(size)
    a = torch.randint(0, 6, (1, 1, 23, 31), generator=g).float()  # many ties
    got = strict_maxima(a, size)[0, 0].numpy()
    np.testing.assert_array_equal(got, brute_force_strict_maxima(a[0, 0].numpy(), size))


@pytest.mark.parametrize("size, border, threshold", [(1, 0, 0.0), (3, 2, 2.0), (9, 0, 0.0), (15, 4, 1.0), (15, 15, 0.0)])
@pytest.mark.parametrize("h, w", [(37, 41), (1, 7), (2, 2), (6, 1), (3, 3)])  # and the edge cases of the 3x3 pre-test
def test_compiled_local_maxima_match_brute_force(size, border, threshold, h, w):
    g = torch.Generator().manual_seed(size + border)
    a = torch.randint(0, 6, (h, w), generator=g).float()  # many ties
    keep = brute_force_strict_maxima(a.numpy(), size) & (a.numpy() > threshold)
    inside = np.zeros_like(keep)
    inside[border : h - border, border : w - border] = True
    rows, cols = np.nonzero(keep & inside)  # row-major
    got = local_maxima(a, size, border, threshold)
    np.testing.assert_array_equal(got[0].numpy(), rows)
    np.testing.assert_array_equal(got[1].numpy(), cols)


def test_local_maxima_overflow_raises_instead_of_writing_past_the_buffers(monkeypatch):
    from keynet import kernels

    # A 9 x 9 grid of isolated peaks: 81 strict maxima of size 3, the bound of a 17 x 17 map.
    a = np.zeros((17, 17), np.float32)
    a[::2, ::2] = 1.0
    assert len(local_maxima(torch.from_numpy(a), 3, 0, 0.0)[0]) == 81
    # Buffers one short, as views of larger arrays: nothing may be written past them. Border 0
    # overflows on the last maximum (16, 16), found by the scalar test of the edge rows; border 1
    # keeps 7 x 7 maxima and overflows on (14, 14), found after the 3x3 pre-test.
    for border, kept in ((0, 81), (1, 49)):
        rows, cols = np.full(kept + 8, -7, np.int64), np.full(kept + 8, -7, np.int64)
        assert kernels._local_maxima(a, 1, border, 0.0, rows[: kept - 1], cols[: kept - 1]) == -1
        assert (rows[kept - 1 :] == -7).all() and (cols[kept - 1 :] == -7).all()
        assert kernels._local_maxima(a, 1, border, 0.0, rows[:kept], cols[:kept]) == kept
    # The wrapper sizes its buffers from the bound that holds for strict maxima; were the kernel to
    # find more, it raises instead of corrupting memory.
    real = kernels._local_maxima
    monkeypatch.setattr(kernels, "_local_maxima", lambda s, r, b, t, rows, cols: real(s, r, b, t, rows[:5], cols[:5]))
    with pytest.raises(RuntimeError, match="more than 81 maxima"):
        local_maxima(torch.from_numpy(a), 3, 0, 0.0)


@pytest.mark.parametrize("image", ["oxford_affine/graf/img1.png", "hpatches/v_dogman/1.png"])
def test_kornia_compat_matches_kornia_detector(data_dir, reference_weights, ref_detector, image):
    x = read_gray(data_dir / image)
    theirs = KF.KeyNetDetector(pretrained=False, num_features=2048)
    theirs.model.load_state_dict(load_state_dict_file(reference_weights))
    theirs.eval()
    with torch.no_grad():
        lafs, _ = theirs(x)
    ours = ref_detector.detect(x)[0]
    a = torch.cat([ours["keypoints"], ours["scales"][:, None]], 1).double()
    b = torch.cat([lafs[0, :, :, 2], lafs[0, :, 0, 0][:, None]], 1).double()
    assert len(a) == len(b) == 2048
    # Every keypoint of each set has one in the other within 1e-3 px in position and scale.
    diff = (a[:, None] - b[None]).abs().amax(-1)
    assert diff.min(1).values.max().item() < 1e-3
    assert diff.min(0).values.max().item() < 1e-3


def test_detection_is_deterministic_and_batch_equals_single(data_dir, ref_detector):
    img = read_gray(data_dir / "oxford_affine/boat/img1.png")
    crops = torch.cat([img[..., :300, :360], img[..., 200:500, 300:660]])
    batch = ref_detector.detect(crops)
    for i in range(2):
        single = ref_detector.detect(crops[i : i + 1])[0]
        again = ref_detector.detect(crops[i : i + 1])[0]
        for k in ("keypoints", "scales", "scores"):
            assert torch.equal(single[k], again[k])
            assert torch.equal(single[k], batch[i][k])


def test_level_mapping_is_centred_and_kornia_mode_is_not():
    # One blob; with the identity response every level's maximum lies on it.
    cx, cy = 60.0, 52.0
    img = blob_image(128, 120, [(cx, cy)], sigma=4.0)
    ours = KeyNetDetector(network=Identity(), num_keypoints=10, border=8).detect(img)
    kor = KeyNetDetector(network=Identity(), num_keypoints=10, border=8, compat="kornia").detect(img)
    levels = 1 + 1 + 4  # up + full + down levels, all large enough here
    assert len(ours["scores"]) == levels
    factors = (ours["scales"] / 22.0).double()
    err = (ours["keypoints"].double() - torch.tensor([cx, cy], dtype=torch.float64)).abs()
    # A level pixel spans `factor` image pixels, so its centre is within factor/2 of the blob.
    assert (err <= factors[:, None] / 2 + 1e-6).all()
    # kornia's u * f places a level pixel (f - 1) / 2 towards the origin (f per axis: W / w, H / h).
    shift = ours["keypoints"] - kor["keypoints"]
    expected = (ours["scales"] / 22.0 - 1) / 2  # from the mean of the two axes' factors
    torch.testing.assert_close(shift, expected[:, None].expand(-1, 2), atol=0.05, rtol=0)
    assert shift[ours["scales"] > 40].min() > 0.4


def test_scales_are_22_times_level_factor():
    img = blob_image(200, 200, [(100, 100)], sigma=5.0)
    out = KeyNetDetector(network=Identity(), border=8).detect(img)
    # Level sides: int(200 * sqrt 2) = 282 up; then floor(side / sqrt 2) each step: 141, 99, 70, 49.
    want = [22 * 200 / side for side in (282, 200, 141, 99, 70, 49)]
    got = sorted(set(out["scales"].tolist()))
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_up_levels_2_adds_a_level_at_twice_the_resolution():
    # A blob between pixels: the 400 px level (int(200 * 2)) finds it with radius 22 / 2 = 11, and its
    # sub-pixel vertex maps back onto the centre (bilinear upsampling bends the peak by < 0.1 px).
    x0, y0 = 100.3, 90.6
    img = torch.from_numpy(blob_image(200, 200, [(x0, y0)], sigma=4.0))
    one = KeyNetDetector(network=Identity(), border=8).detect(img)
    two = KeyNetDetector(network=Identity(), border=8, up_levels=2, subpixel=True).detect(img)
    assert one["scales"].min() > 15 and len(two["scales"]) == len(one["scales"]) + 1
    fine = two["keypoints"][two["scales"] == 11.0]
    assert len(fine) == 1 and (fine[0] - torch.tensor([x0, y0])).abs().max() < 0.15


def test_fewer_keypoints_than_asked_and_no_padding():
    img = blob_image(96, 96, [(30, 30), (66, 60)])
    out = KeyNetDetector(network=Identity(), num_keypoints=500, pyramid_levels=0, up_levels=0, border=8).detect(img)
    assert len(out["scores"]) == 2
    assert (out["scores"] > 0).all()
    torch.testing.assert_close(out["keypoints"], torch.tensor([[30.0, 30.0], [66.0, 60.0]]))


def test_global_top_k_takes_the_best_over_all_levels():
    img = blob_image(160, 160, [(40, 40), (110, 120)])
    full = KeyNetDetector(network=Identity(), num_keypoints=1000, border=8).detect(img)
    top3 = KeyNetDetector(network=Identity(), num_keypoints=3, border=8).detect(img)
    assert torch.equal(top3["scores"], full["scores"][:3])
    assert (full["scores"][:-1] >= full["scores"][1:]).all()


def test_level_gamma_weights_each_level_by_its_factor_before_the_top_k():
    img = blob_image(160, 160, [(40, 40), (110, 120)], sigma=4.0)
    plain = KeyNetDetector(network=Identity(), num_keypoints=1000, border=8).detect(img)
    weighted = KeyNetDetector(network=Identity(), num_keypoints=1000, border=8, level_gamma=1.5).detect(img)
    # the same keypoints, each score times (radius / 22) ** 1.5, the order following the new scores
    order = torch.argsort(plain["scores"] * (plain["scales"] / 22.0) ** 1.5, descending=True, stable=True)
    torch.testing.assert_close(weighted["keypoints"], plain["keypoints"][order])
    torch.testing.assert_close(weighted["scores"], (plain["scores"] * (plain["scales"] / 22.0) ** 1.5)[order])
    top = {g: KeyNetDetector(network=Identity(), num_keypoints=4, border=8, level_gamma=g).detect(img)["scales"]
           for g in (0.0, 1.5)}
    assert top[1.5].mean() > top[0.0].mean()  # a positive gamma favours the coarse levels


def test_offset_moves_each_keypoint_by_its_levels_pixels():
    img = blob_image(160, 160, [(40.3, 40.6), (110.2, 120.7)], sigma=4.0)
    plain = KeyNetDetector(network=Identity(), border=8, subpixel=True).detect(img)
    moved = KeyNetDetector(network=Identity(), border=8, subpixel=True, offset=(0.25, -0.5)).detect(img)
    # a square image: fx = fy = radius / 22 image pixels per level pixel
    f = plain["scales"] / 22.0
    torch.testing.assert_close(moved["keypoints"], plain["keypoints"] + torch.stack([0.25 * f, -0.5 * f], 1))
    torch.testing.assert_close(moved["scores"], plain["scores"])
    for bad in [(1.0,), (0.0, float("nan")), "shipped"]:
        with pytest.raises(ValueError, match="offset must be two finite numbers"):
            KeyNetDetector(network=Identity(), offset=bad)


def test_input_std_makes_keypoints_independent_of_the_exposure(data_dir):
    img = read_gray(data_dir / "oxford_affine/bikes/img1.png")[..., :240, :320]
    darker = 0.35 * img + 0.05  # gain and brightness, as a shorter exposure
    for model in ("keynet", "tiny"):
        norm = KeyNetDetector(model=model, subpixel=True, num_keypoints=500, input_std=0.2)
        a, b = norm.detect(img)[0], norm.detect(darker)[0]
        assert len(a["keypoints"]) == len(b["keypoints"]) == 500
        # the same keypoints up to float rounding (near-equal scores may swap places at the cut)
        assert found_in(a, b).float().mean() >= 0.99
        # without it the network's maxima move: the control that this test can fail
        raw = KeyNetDetector(model=model, subpixel=True, num_keypoints=500)
        assert found_in(raw.detect(img)[0], raw.detect(darker)[0]).float().mean() < 0.5


def test_contrast_normalised_by_hand():
    from keynet.detector import contrast_normalised

    x = torch.tensor([[0.1, 0.3], [0.5, 0.7]])[None, None]  # std (population) sqrt(0.05) = 0.2236
    y = contrast_normalised(torch.cat([x, torch.full_like(x, 0.4)]), 0.2)
    torch.testing.assert_close(y[0], x[0] * (0.2 / np.sqrt(0.05)))
    torch.testing.assert_close(y[1], torch.full_like(x[0], 0.4))  # a constant image is left as it is
    assert contrast_normalised(x, 0.0) is x
    for bad in (-0.1, float("inf"), "a"):
        with pytest.raises(ValueError, match="input_std must be a finite number >= 0"):
            KeyNetDetector(network=Identity(), input_std=bad)


def test_mask_keeps_keypoints_inside_only():
    img = blob_image(96, 128, [(30, 40), (90, 50)])
    mask = np.zeros((96, 128), bool)
    mask[:, 64:] = True
    det = KeyNetDetector(network=Identity(), pyramid_levels=0, up_levels=0, border=8)
    out = det.detect(img, mask=mask)
    assert out["keypoints"].tolist() == [[90.0, 50.0]]


def test_lafs_follow_kornia_conventions(ref_detector, data_dir):
    from kornia.feature import get_laf_center, get_laf_scale

    img = read_gray(data_dir / "hpatches/v_dogman/1.png")[..., :200, :240]
    out = ref_detector.detect(img[0, 0], return_lafs=True)
    lafs = out["lafs"][None]
    torch.testing.assert_close(get_laf_center(lafs)[0], out["keypoints"])
    torch.testing.assert_close(get_laf_scale(lafs)[0, :, 0, 0], out["scales"])


def test_unknown_option_and_bad_compat_are_rejected():
    with pytest.raises(TypeError, match="unknown option"):
        KeyNetDetector(network=Identity(), num_keypoint=5)
    with pytest.raises(ValueError, match="compat"):
        KeyNetDetector(network=Identity(), compat="opencv")


def test_banded_maxima_are_exact():
    det = KeyNetDetector(network=Identity(), band_pixels=40 * 64)  # bands of 40 rows of a 64-wide map
    g = torch.Generator().manual_seed(3)
    score = torch.randint(0, 50, (1, 1, 150, 64), generator=g).float()
    assert len(det.scorer.bands(150, 64)) == 4
    assert torch.equal(det.scorer.maxima(score), strict_maxima(score, 15))


@pytest.mark.parametrize("model", ["keynet", "tiny"])
def test_banded_detection_equals_whole_image_detection(data_dir, model):
    img = read_gray(data_dir / "oxford_affine/bikes/img1.png")[..., :480, :640]
    whole = KeyNetDetector(model=model, num_keypoints=1000).detect(img)[0]
    banded_det = KeyNetDetector(model=model, num_keypoints=1000, band_pixels=100 * 640)
    assert len(banded_det.scorer.bands(480, 640)) == 5
    banded = banded_det.detect(img)[0]
    assert len(banded["keypoints"]) == len(whole["keypoints"]) == 1000
    torch.testing.assert_close(banded["keypoints"], whole["keypoints"], rtol=0, atol=1e-4)
    torch.testing.assert_close(banded["scores"], whole["scores"], rtol=1e-5, atol=0)


def test_other_networks_are_banded_with_context_rows(data_dir, reference_weights):
    """A network that is not Key.Net's own (here the plain KeyNet module through a wrapper) is run
    on bands with ``band_margin`` rows of context: its in-network resampling then follows each
    band's grid, so a few keypoints move."""
    net = load_model(reference_weights).eval()
    img = read_gray(data_dir / "oxford_affine/bikes/img1.png")[..., :480, :640]
    whole = KeyNetDetector(network=nn.Sequential(net), num_keypoints=1000).detect(img)[0]
    banded = KeyNetDetector(network=nn.Sequential(net), num_keypoints=1000, band_pixels=100 * 640).detect(img)[0]
    same = found_in(whole, banded)
    assert 0.9 <= same.double().mean() < 1.0


def test_bfloat16_detection_keeps_most_keypoints(data_dir, reference_weights):
    x = read_gray(data_dir / "oxford_affine/graf/img1.png")[..., :320, :400]
    exact = KeyNetDetector(weights=reference_weights, num_keypoints=500).detect(x)[0]
    fast = KeyNetDetector(weights=reference_weights, num_keypoints=500, precision="bfloat16").detect(x)[0]
    assert len(fast["keypoints"]) == 500
    share = found_in(fast, exact).float().mean().item()
    assert 0.8 < share < 1.0, share  # most keypoints are the same; bfloat16 rounding moves a few


def test_bad_precision_is_a_clear_error():
    with pytest.raises(ValueError, match="precision must be one of"):
        KeyNetDetector(precision="float16")
    with pytest.raises(ValueError, match="applies to a Key.Net network"):
        KeyNetDetector(network=Identity(), precision="bfloat16")


@pytest.mark.parametrize("native", [True, False])
def test_emulated_bfloat16_is_warned_about(monkeypatch, native):
    import warnings

    from keynet import detector

    monkeypatch.setattr(detector, "native_bfloat16", lambda: native)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        KeyNetDetector(precision="bfloat16")
    assert any("emulated" in str(w.message) for w in caught) == (not native)


def test_subpixel_refinement_finds_a_peak_between_pixels():
    # A Gaussian blob centred between pixels; the 'network' returns the image itself, so the only
    # maximum is the blob's, and its parabola vertex lies within a few hundredths of a pixel of the centre.

    h, w, (x0, y0), sigma = 64, 80, (40.3, 30.7), 3.0
    yy, xx = np.mgrid[0:h, 0:w]
    image = torch.from_numpy(np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * sigma**2)).astype(np.float32))[None, None]
    opts = dict(network=Identity(), num_keypoints=1, up_levels=0, pyramid_levels=0)
    plain = KeyNetDetector(**opts).detect(image)[0]["keypoints"][0]
    refined = KeyNetDetector(**opts, subpixel=True).detect(image)[0]["keypoints"][0]
    assert plain.tolist() == [40.0, 31.0]
    assert abs(refined[0] - x0) < 0.05 and abs(refined[1] - y0) < 0.05


def test_subpixel_offsets_by_hand():
    from keynet.detector import subpixel_offsets

    score = torch.zeros(5, 5)
    score[2, 1:4] = torch.tensor([1.0, 3.0, 2.0])  # x: parabola through (-1, 1), (0, 3), (1, 2) peaks at +1/6
    score[1:4, 2] = torch.tensor([2.0, 3.0, 2.0])  # y: symmetric, no offset
    du, dv = subpixel_offsets(score, torch.tensor([2]), torch.tensor([2]))
    assert du.item() == pytest.approx(1 / 6) and dv.item() == 0.0
