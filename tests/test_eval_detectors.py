"""Detector specs, scale conventions and the common SIFT descriptor (keynet.eval.detectors)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from keynet.eval import protocols as P
from keynet.eval.detectors import KeyNetEval, make_detector
from keynet.features.descriptors import RADIUS_PER_OPENCV_SIZE, to_uint8
from keynet.features.descriptors import SIFTDescriptor, sift_octave_layer
from keynet.io.image import load_image
from keynet.weights import SHIPPED_OFFSETS


@pytest.fixture(scope="module")
def crop(data_dir: Path) -> np.ndarray:
    torch.set_num_threads(1)
    return load_image(data_dir / "oxford_affine/graf/img1.png")[100:340, 200:520]


def test_spec_parsing(reference_weights: Path) -> None:
    det = make_detector("keynet-ref,compat=kornia", 100)
    assert isinstance(det, KeyNetEval) and det.name == "keynet-ref,compat=kornia"
    assert det._det.conf["compat"] == "kornia" and det._det.conf["num_keypoints"] == 100
    assert make_detector(f"keynet:{reference_weights},model=keynet").name.startswith("keynet:")
    assert make_detector("keynet,model=tiny,offset=shipped")._det.conf["offset"] == SHIPPED_OFFSETS["tiny"]
    assert make_detector("keynet,offset=0.5:-1")._det.conf["offset"] == (0.5, -1.0)
    for bad, msg in [("surf", "unknown detector"), ("sift,compat=kornia", "unknown option"), ("keynet-ref,x", "key=value"),
                     ("keynet-ref,offset=shipped", "shipped"), ("keynet,offset=1", "DX:DY")]:
        with pytest.raises(ValueError, match=msg):
            make_detector(bad)


def test_opencv_detectors_sorted_unique_and_within_budget(crop: np.ndarray) -> None:
    for name in ("sift", "orb", "fast", "gftt", "harris", "akaze", "kaze", "harris-laplace"):
        f = make_detector(name, 300).detect(crop)
        assert 0 < len(f) <= 300 and f.keypoints.shape == (len(f), 2), name
        assert np.all(np.diff(f.scores) <= 0), name
        assert len(np.unique(np.c_[f.keypoints, f.scales], axis=0)) == len(f), name  # no copies


def test_sift_budget_counts_unique_keypoints(crop: np.ndarray) -> None:
    # Brute force: all of SIFT's keypoints, orientation copies merged, the best n by response.
    raw = cv2.SIFT_create().detect(to_uint8(crop), None)
    unique: dict[tuple[float, float, float], float] = {}
    for k in raw:
        key = (k.pt[0], k.pt[1], k.size)
        unique[key] = max(unique.get(key, -np.inf), k.response)
    assert len(unique) < len(raw)  # the crop has orientation copies
    n = len(unique) - 5
    best = sorted(unique.items(), key=lambda kv: -kv[1])[:n]
    f = make_detector("sift", n).detect(crop)
    assert len(f) == n  # SIFT_create(nfeatures=n) would leave fewer: it counts the copies
    assert sorted(f.scores) == sorted(r for _, r in best)
    np.testing.assert_allclose(sorted(f.scales), sorted(3 * k[2] for k, _ in best), rtol=1e-6)


# Each detector's radius from its own KeyPoint.size convention (OpenCV's sources): the expected
# radii are written from the detectors' parameters, not from keynet's table.
def test_orb_radius_is_half_its_patch_at_the_level(crop: np.ndarray) -> None:
    raw = cv2.ORB_create(nfeatures=500).detect(to_uint8(crop), None)
    f = make_detector("orb", 500).detect(crop)
    expected = {round(31 / 2 * 1.2**k.octave, 3) for k in raw}  # patchSize 31, scaleFactor 1.2
    assert {round(float(r), 3) for r in f.scales} == expected
    assert f.scales.min() == pytest.approx(15.5)


@pytest.mark.parametrize("name", ["akaze", "kaze"])
def test_nonlinear_scale_space_radius_is_six_sigma(name: str, crop: np.ndarray) -> None:
    # Both start at sigma = 1.6 (soffset) with 4 sublevels per octave; KAZE refines the scale by up
    # to half a sublevel.
    f = make_detector(name, 5000).detect(crop)
    sigma0 = 1.6
    if name == "kaze":
        assert 6 * sigma0 * 2 ** (-1 / 8) <= f.scales.min() <= 6 * sigma0 * 2 ** (3 / 8)
    else:
        steps = np.log2(f.scales / (6 * sigma0)) * 4
        np.testing.assert_allclose(steps, np.round(steps), atol=1e-4)


def test_harris_laplace_radius_is_its_size(crop: np.ndarray) -> None:
    raw = cv2.xfeatures2d.HarrisLaplaceFeatureDetector_create().detect(to_uint8(crop), None)
    f = make_detector("harris-laplace", 5000).detect(crop)
    assert sorted(set(np.round(f.scales, 3))) == sorted({round(k.size, 3) for k in raw})  # size = 6 sigma_I


@pytest.mark.parametrize("name", ["fast", "gftt", "harris"])
def test_corners_without_scale_get_orbs_patch(name: str, crop: np.ndarray) -> None:
    assert np.all(make_detector(name, 300).detect(crop).scales == 15.5)


def test_sift_octave_layer() -> None:
    # size = 2 * 1.6 * 2^(octave + layer / 3), layers 1..3 preferred, octave >= -1.
    sizes = 3.2 * 2.0 ** np.array([0.0, 1.0, 1 / 3, 2.0 + 2 / 3, -1.0, -5.0])
    octave, layer = sift_octave_layer(sizes)
    # 3.2 -> octave -1 layer 3 (not octave 0 layer 0); anything finer than octave -1 layer 1 clamps.
    assert octave.tolist() == [-1, 0, 0, 2, -1, -1] and layer.tolist() == [3, 3, 1, 2, 1, 1]


def test_sift_descriptor_equals_opencv_sift_on_its_own_keypoints(crop: np.ndarray) -> None:
    # Round trip size -> radius -> size: the descriptor is OpenCV's own upright SIFT descriptor.
    sift = cv2.SIFT_create(nfeatures=200)
    img = to_uint8(crop)
    kps = sift.detect(img, None)
    for k in kps:
        k.angle = 0.0
    _, ref = sift.compute(img, kps)
    xy = np.array([k.pt for k in kps])
    radius = RADIUS_PER_OPENCV_SIZE * np.array([k.size for k in kps])
    np.testing.assert_array_equal(SIFTDescriptor().compute(crop, xy, radius), ref)


def test_sift_descriptor_at_foreign_keypoints(crop: np.ndarray) -> None:
    # Any radius (tiny to larger than the image) gets a finite descriptor, rows in input order.
    xy = np.array([[50.0, 60.0], [100.5, 80.25], [160.0, 120.0], [10.0, 5.0]])
    d = SIFTDescriptor().compute(crop, xy, np.array([2.0, 22.0, 500.0, 31.0]))
    assert d.shape == (4, 128) and np.isfinite(d).all() and d.any(1).all()
    assert SIFTDescriptor().compute(crop, np.zeros((0, 2)), np.zeros(0)).shape == (0, 128)


@pytest.mark.parametrize("spec", ["sift", "orb", "keynet-ref"])
def test_identical_images_identity_h_full_repeatability(spec: str, crop: np.ndarray, reference_weights: Path) -> None:
    det = make_detector(spec, 500)
    a, b = det.detect(crop), det.detect(crop.copy())
    out = P.keynet_repeatability(
        a.keypoints, a.scales, a.scores, b.keypoints, b.scales, b.scores, np.eye(3), crop.shape, crop.shape
    )
    assert out["num_a"] > 50 and out["rep_L"] == 1.0 and out["rep_SL"] == 1.0
    desc = SIFTDescriptor()
    da = desc.compute(crop, a.keypoints[out["idx_a"]], a.scales[out["idx_a"]])
    db = desc.compute(crop, b.keypoints[out["idx_b"]], b.scales[out["idx_b"]])
    ms = P.keynet_matching_score(da, db, a.keypoints[out["idx_a"]], out["kps_b_in_a"])
    # Every distinct descriptor matches itself; exact copies (ORB's coarse levels sample the same
    # pixels for nearby points) match only their first occurrence.
    assert ms == len(np.unique(da, axis=0)) / len(da)
    if spec != "orb":
        assert ms == 1.0


def test_kornia_cross_check_agrees_with_compat_mode(crop: np.ndarray, reference_weights: Path) -> None:
    ours = make_detector("keynet-ref,compat=kornia", 300).detect(crop)
    theirs = make_detector("kornia-keynet", 300).detect(crop)
    assert len(ours) == len(theirs)
    np.testing.assert_allclose(ours.keypoints, theirs.keypoints, atol=1e-3)
    np.testing.assert_allclose(ours.scales, theirs.scales, rtol=1e-5)


def test_hardtfeat_descriptor_matches_affnet_architecture(data_dir: Path, crop: np.ndarray) -> None:
    # AffNet's HardTFeatNet written out with its own weights (patch normalisation as kornia's
    # InstanceNorm): conv7 - tanh - maxpool2 - conv6 - tanh - conv8 - tanh - L2 normalisation.
    import torch.nn.functional as F

    from keynet.features.descriptors import make_descriptor
    from keynet.weights import load_state_dict_file

    desc = make_descriptor("hardtfeat")
    w = load_state_dict_file(data_dir / "weights/affnet/HardTFeat.pth")
    patches = torch.rand(5, 1, 32, 32)
    x = F.instance_norm(patches, eps=1e-5)
    x = torch.tanh(F.conv2d(x, w["features.0.weight"], w["features.0.bias"]))
    x = torch.tanh(F.conv2d(F.max_pool2d(x, 2), w["features.3.weight"], w["features.3.bias"]))
    x = torch.tanh(F.conv2d(x, w["classifier.1.weight"], w["classifier.1.bias"])).flatten(1)
    with torch.inference_mode():
        ours = F.normalize(desc.net(patches), dim=1)
    torch.testing.assert_close(ours, F.normalize(x, dim=1), atol=1e-5, rtol=1e-5)

    d = desc.compute(crop, np.array([[100.0, 120.0], [200.0, 60.0]]), np.array([22.0, 31.0]))
    assert d.shape == (2, 128) and np.allclose(np.linalg.norm(d, axis=1), 1.0, atol=1e-5)


def test_default_budget_does_not_bind_before_the_common_area_filter(data_dir: Path) -> None:
    # bark 1-6 (zoom x4 and rotation): few of image 6's keypoints lie in the common area. A budget
    # applied before the filter (the former default, 2048) leaves fewer of them, shrinking the
    # min(#a, #b) denominator and inflating repeatability.
    from keynet.cli import build_parser
    from keynet.eval.run import DETECTION_BUDGET

    seq = data_dir / "oxford_affine/bark"
    a, b = load_image(seq / "img1.png"), load_image(seq / "img6.png")
    H = np.loadtxt(seq / "H1to6p")

    def rep(budget: int) -> dict:
        det = make_detector("sift", budget)
        fa, fb = det.detect(a), det.detect(b)
        return P.keynet_repeatability(fa.keypoints, fa.scales, fa.scores, fb.keypoints, fb.scales, fb.scores,
                                      H, a.shape, b.shape, 1000)

    default, unbounded, capped = rep(DETECTION_BUDGET), rep(10**6), rep(2048)
    assert (default["rep_SL"], default["num_b"]) == (unbounded["rep_SL"], unbounded["num_b"])
    assert capped["num_b"] < default["num_b"] < 1000 and capped["rep_SL"] > default["rep_SL"] + 0.1
    args = build_parser().parse_args(["eval", "--data", "x", "--detector", "sift", "--out", "o"])
    assert args.num_keypoints == DETECTION_BUDGET
