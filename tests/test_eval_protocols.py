"""Hand-computed cases pinning every step of the evaluation protocols (keynet.eval.protocols)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from keynet.eval import protocols as P

# ------------------------------------------------------------------------------------ circle IoU


def _numeric_intersection(r1: float, r2: float, d: float, n: int = 2000) -> float:
    """Intersection area by a midpoint-rule integral over a grid covering the smaller circle."""
    r = min(r1, r2)
    cx = d if r2 <= r1 else 0.0  # centre of the smaller circle; the other is at (0,0) or (d,0)
    ox = 0.0 if r2 <= r1 else d
    big = max(r1, r2)
    step = 2 * r / n
    g = -r + step * (np.arange(n) + 0.5)
    xs, ys = np.meshgrid(cx + g, g)
    in_small = (xs - cx) ** 2 + ys**2 <= r * r
    in_big = (xs - ox) ** 2 + ys**2 <= big * big
    return float((in_small & in_big).sum() * step * step)


@pytest.mark.parametrize(
    "r1,r2,d",
    [(30, 30, 0), (30, 30, 10), (30, 30, 45), (30, 12, 25), (12, 30, 25), (30, 10, 15), (5, 7, 11.5)],
)
def test_circle_intersection_matches_numeric_integral(r1: float, r2: float, d: float) -> None:
    exact = P.circle_intersection_area(r1, r2, d)
    assert exact == pytest.approx(_numeric_intersection(r1, r2, d), rel=2e-3, abs=1e-2)


def test_circle_iou_closed_forms() -> None:
    # Disjoint and touching circles: 0. Concentric: (r_small / r_big)^2.
    assert P.circle_iou(30, 30, 60.0) == 0.0
    assert P.circle_iou(30, 30, 61.0) == 0.0
    assert P.circle_iou(30, 15, 0.0) == pytest.approx(0.25)
    # Contained but off-centre: still the area ratio.
    assert P.circle_iou(30, 10, 19.0) == pytest.approx(1 / 9)
    # Equal circles radius R at distance R: lens area = (2*pi/3 - sqrt(3)/2) R^2.
    lens = (2 * np.pi / 3 - np.sqrt(3) / 2) * 900
    assert P.circle_iou(30, 30, 30.0) == pytest.approx(lens / (2 * np.pi * 900 - lens))


def test_iou_threshold_distance_for_L_radius() -> None:
    # For two radius-30 circles IoU = 0.6 at d ~= 11.8586 px: a 11.85 px offset corresponds, 11.87 not.
    assert P.circle_iou(30, 30, 11.85) >= 0.6 > P.circle_iou(30, 30, 11.87)


# ---------------------------------------------------------------------------------------- greedy


def test_greedy_takes_highest_first_not_row_order() -> None:
    # Row 0 would take col 0 (0.7) in row order; greedy takes (1, 0) = 0.9 first, then (0, 1) = 0.65.
    ov = np.array([[0.7, 0.65], [0.9, 0.1]])
    assert P.greedy_one_to_one(ov, 0.6).tolist() == [[1, 0], [0, 1]]


def test_greedy_threshold_is_inclusive_and_one_to_one() -> None:
    ov = np.array([[0.6, 0.6], [0.6, 0.59999]])
    # Ties in row-major order: (0,0) then (0,1) is blocked by row 0, (1,0) by col 0; 0.59999 < 0.6.
    assert P.greedy_one_to_one(ov, 0.6).tolist() == [[0, 0]]
    assert len(P.greedy_one_to_one(np.zeros((3, 0)), 0.6)) == 0


# -------------------------------------------------------------------------------- scale transfer


def test_scale_transfer_through_affine_h() -> None:
    # Affine H: det of the linear part = 1.5 * 2 - 0.3 * 0 = 3 -> radii times sqrt(3) everywhere.
    H = np.array([[1.5, 0.3, 10.0], [0.0, 2.0, -5.0], [0.0, 0.0, 1.0]])
    pts = np.array([[0.0, 0.0], [100.0, 50.0]])
    q, r = P.transfer_keypoints(pts, np.array([10.0, 22.0]), H)
    np.testing.assert_allclose(q, [[10.0, -5.0], [175.0, 95.0]])
    np.testing.assert_allclose(r, np.array([10.0, 22.0]) * np.sqrt(3.0))


def test_jacobian_det_of_projective_h_against_finite_differences() -> None:
    H = np.array([[0.9, 0.3, -39.0], [-0.18, 0.94, 153.0], [2e-4, -1.6e-5, 1.0]])
    p = np.array([[200.0, 300.0], [640.0, 20.0]])
    eps = 1e-4
    dx = (P.warp_points(p + [eps, 0], H) - P.warp_points(p - [eps, 0], H)) / (2 * eps)
    dy = (P.warp_points(p + [0, eps], H) - P.warp_points(p - [0, eps], H)) / (2 * eps)
    det_fd = dx[:, 0] * dy[:, 1] - dx[:, 1] * dy[:, 0]
    np.testing.assert_allclose(P.homography_jacobian_det(p, H), det_fd, rtol=1e-6)
    # Identity det J = det(H) / w^3.
    w = p @ H[2, :2] + H[2, 2]
    np.testing.assert_allclose(P.homography_jacobian_det(p, H), np.linalg.det(H) / w**3, rtol=1e-9)


# ------------------------------------------------------------------------------- common area mask


def test_common_area_mask_of_integer_translation() -> None:
    # b = a shifted: x_b = x_a - 40, y_b = y_a + 10, both 100 x 120 (h x w).
    H = np.array([[1.0, 0, -40], [0, 1.0, 10], [0, 0, 1.0]])
    mask_a, mask_b = P.common_area_masks(H, (100, 120), (100, 120))
    # In a: 15 <= x <= 104 and 15 <= x - 40 <= 104 -> 55..104; 15 <= y <= 84 and 15 <= y + 10 -> 15..74.
    exp_a = np.zeros((100, 120), bool)
    exp_a[15:75, 55:105] = True
    exp_b = np.zeros((100, 120), bool)
    exp_b[25:85, 15:65] = True
    np.testing.assert_array_equal(mask_a, exp_a)
    np.testing.assert_array_equal(mask_b, exp_b)


def test_common_area_mask_subpixel_threshold() -> None:
    # Shift by 0.3 px: the bilinear sample at x_b = x_a + 0.3 near the right edge (last 1 at 104,
    # size 120) is 105 - x_b; x_a = 104 gives 0.7 < 0.75 -> excluded. Left edge: x_a = 15 -> 15.3, 1.
    H = np.array([[1.0, 0, 0.3], [0, 1.0, 0], [0, 0, 1.0]])
    mask_a, _ = P.common_area_masks(H, (100, 120), (100, 120))
    assert mask_a[50, 103] and not mask_a[50, 104] and mask_a[50, 15] and not mask_a[50, 14]
    # Shift by 0.2 px: 0.8 >= 0.75, kept.
    H[0, 2] = 0.2
    assert P.common_area_masks(H, (100, 120), (100, 120))[0][50, 104]


def test_common_area_mask_agrees_with_opencv_warp() -> None:
    # The analytic mask equals warping the border-removed indicator with cv2.warpPerspective, up to
    # OpenCV's 1/32 px fixed-point interpolation (a few pixels along the mask's edge).
    H = np.array([[0.88, 0.31, -20.0], [-0.18, 0.94, 40.0], [2e-4, -1.6e-5, 1.0]])
    sa, sb = (180, 240), (170, 230)
    mask_a, _ = P.common_area_masks(H, sa, sb)
    ones_b = np.zeros(sb, np.float32)
    ones_b[15:-15, 15:-15] = 1.0
    warped = cv2.warpPerspective(ones_b, np.linalg.inv(H), (sa[1], sa[0]), flags=cv2.INTER_LINEAR)
    ref = warped >= 0.75
    ref[:15], ref[-15:], ref[:, :15], ref[:, -15:] = False, False, False, False
    assert (mask_a != ref).sum() <= 0.002 * mask_a.size
    assert mask_a.sum() > 0.3 * mask_a.size


def test_in_common_area_rounding_and_mask_lookup() -> None:
    H = np.array([[1.0, 0, -40], [0, 1.0, 10], [0, 0, 1.0]])  # mask of a: x in 55..104, y in 15..74
    pts = np.array([[54.5, 30], [55.5, 30], [104.5, 30], [104.6, 30], [60, 74.5], [-3, -3], [1e4, 5]])
    # Half to even: 54.5 -> 54 (out), 55.5 -> 56, 104.5 -> 104, 74.5 -> 74 (in); 104.6 -> 105 (out).
    got = P.in_common_area(pts, H, (100, 120), (100, 120))
    assert got.tolist() == [False, True, True, False, True, False, False]
    # Same as looking points up in the full mask, for a projective H.
    Hp = np.array([[0.88, 0.31, -20.0], [-0.18, 0.94, 40.0], [2e-4, -1.6e-5, 1.0]])
    mask_a, _ = P.common_area_masks(Hp, (180, 240), (170, 230))
    rnd = np.random.default_rng(0).uniform([0, 0], [239.4, 179.4], (2000, 2))
    r = np.rint(rnd).astype(int)
    assert P.in_common_area(rnd, Hp, (180, 240), (170, 230)).tolist() == mask_a[r[:, 1], r[:, 0]].tolist()


def test_top_k_is_stable() -> None:
    assert P.top_k_indices(np.array([1.0, 3.0, 3.0, 2.0]), 3).tolist() == [1, 2, 3]


# ----------------------------------------------------------------------------- full repeatability


def _random_keypoints(n: int, shape: tuple[int, int], seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    kps = rng.uniform([0, 0], [shape[1] - 1, shape[0] - 1], size=(n, 2))
    return kps, rng.uniform(10, 60, n), rng.uniform(0, 1, n)


def test_identity_gives_full_repeatability() -> None:
    shape = (200, 300)
    kps, sc, s = _random_keypoints(400, shape, 0)
    out = P.keynet_repeatability(kps, sc, s, kps, sc, s, np.eye(3), shape, shape, top_k=1000)
    assert out["rep_L"] == 1.0 and out["rep_SL"] == 1.0
    # Points in the 15 px border are dropped before counting.
    inner = (kps[:, 0] >= 14.5) & (kps[:, 0] <= 284.5) & (kps[:, 1] >= 14.5) & (kps[:, 1] <= 184.5)
    assert out["num_a"] == out["num_b"] == int(inner.sum())


def test_hand_computed_pair() -> None:
    # Identity H on 100 x 100 images.
    # a: A0 (30,30) r=10, A1 (60,60) r=10, A2 (5,50) (in the border -> dropped).
    # b: B0 (35,30) r=10: L IoU(d=5) > 0.6, SL equal radii -> corresponds in both.
    #    B1 (60,60) r=40: L IoU 1; SL radii 7.5 vs 30 -> IoU 1/16 < 0.6: only L.
    #    B2 (80,80) r=10: nothing within 12 px.
    eye = np.eye(3)
    ka = np.array([[30.0, 30], [60, 60], [5, 50]])
    kb = np.array([[35.0, 30], [60, 60], [80, 80]])
    out = P.keynet_repeatability(
        ka, [10, 10, 10], [3, 2, 1], kb, [10, 40, 10], [3, 2, 1], eye, (100, 100), (100, 100)
    )
    assert (out["num_a"], out["num_b"]) == (2, 3)
    assert (out["num_corr_L"], out["num_corr_SL"]) == (2, 1)
    assert out["rep_L"] == 1.0 and out["rep_SL"] == 0.5
    # top_k after the filter: top_k=1 keeps A0 and B0 (best scores inside), which correspond.
    out1 = P.keynet_repeatability(
        ka, [10, 10, 10], [3, 2, 9], kb, [10, 40, 10], [3, 2, 1], eye, (100, 100), (100, 100), top_k=1
    )
    assert out1["idx_a"].tolist() == [0] and out1["idx_b"].tolist() == [0] and out1["rep_L"] == 1.0


def test_overlap_threshold_is_0_6_end_to_end() -> None:
    # Identity H on 100 x 100 images, pairs whose overlap lies between 0.5 and 0.6:
    # A0 (30,30) r=10 and B0 (44,30) r=10: two radius-30 circles 14 px apart, L and SL alike;
    # A1 (70,70) r=10 and B1 (70,70) r=7.5: L IoU 1; SL radii 30 and 22.5, concentric.
    R, d = 30.0, 14.0
    lens = 2 * R**2 * np.arccos(d / (2 * R)) - (d / 2) * np.sqrt(4 * R**2 - d**2)  # equal circles
    iou_a0b0 = lens / (2 * np.pi * R**2 - lens)
    iou_a1b1_sl = (7.5 / 10) ** 2  # concentric: area ratio
    assert 0.5 < iou_a0b0 < 0.6 and 0.5 < iou_a1b1_sl < 0.6
    ka, kb = np.array([[30.0, 30], [70, 70]]), np.array([[44.0, 30], [70, 70]])
    out = P.keynet_repeatability(ka, [10, 10], [2, 1], kb, [10, 7.5], [2, 1], np.eye(3), (100, 100), (100, 100))
    assert (out["num_a"], out["num_b"]) == (2, 2)
    # Only A1-B1 under L corresponds (IoU 1); every pair below 0.6 is not a correspondence.
    assert (out["num_corr_L"], out["num_corr_SL"]) == (1, 0)
    assert out["rep_L"] == 0.5 and out["rep_SL"] == 0.0


def test_repeatability_through_scaling_h() -> None:
    # b is a scaled by 2: keypoints of b at 2x position and 2x radius map back exactly.
    H = np.diag([2.0, 2.0, 1.0])
    ka = np.array([[40.0, 40], [70, 50]])
    kb = ka * 2
    out = P.keynet_repeatability(ka, [10, 20], [1, 1], kb, [20, 40], [1, 1], H, (100, 100), (200, 200))
    np.testing.assert_allclose(out["kps_b_in_a"], ka)
    assert out["rep_SL"] == 1.0
    # Same positions but b's radii not doubled: SL radii 30 vs 15 -> IoU 0.25, fails; L still passes.
    out = P.keynet_repeatability(ka, [10, 20], [1, 1], kb, [10, 20], [1, 1], H, (100, 100), (200, 200))
    assert out["rep_L"] == 1.0 and out["rep_SL"] == 0.0


def test_empty_sets() -> None:
    z = np.zeros((0, 2))
    out = P.keynet_repeatability(z, [], [], z, [], [], np.eye(3), (50, 50), (50, 50))
    assert out["rep_L"] == 0.0 and out["num_a"] == 0


# -------------------------------------------------------------------------------------- matching


def test_mutual_nearest_neighbours() -> None:
    a = np.array([[0.0, 0], [1, 0], [5, 5]])
    b = np.array([[0.9, 0], [0.1, 0], [9, 9]])
    # Nearest: a0 -> b1, a1 -> b0, a2 -> b2 (32 < 41.81); b0 -> a1, b1 -> a0, b2 -> a2: all mutual.
    m = P.mutual_nearest_neighbours(a, b)
    assert m.tolist() == [[0, 1], [1, 0], [2, 2]]
    assert P.mutual_nearest_neighbours(a, np.zeros((0, 2))).shape == (0, 2)


def test_keynet_matching_score_strict_threshold() -> None:
    desc = np.eye(4)
    ka = np.array([[0.0, 0], [10, 0], [20, 0], [30, 0]])
    # Errors: 0, 4.999, 5 (not < 5), 7 -> 2 correct of min(4, 4).
    kb = ka + np.array([[0, 0], [4.999, 0], [5, 0], [0, 7]])
    assert P.keynet_matching_score(desc, desc, ka, kb) == 0.5


def test_mma_of_constructed_match_set() -> None:
    # Matches with errors 0.5, 1, 2.5, 3, 9 under H = translation (+2, 0).
    H = np.array([[1.0, 0, 2], [0, 1, 0], [0, 0, 1]])
    ka = np.zeros((5, 2))
    kb = np.array([[2.5, 0], [2, 1], [4.5, 0], [2, -3], [11, 0]])
    m = np.stack([np.arange(5), np.arange(5)], 1)
    err = P.match_errors(ka, kb, m, H)
    np.testing.assert_allclose(err, [0.5, 1, 2.5, 3, 9])
    # Inclusive thresholds: @1 -> 2/5, @3 -> 4/5, @5 -> 4/5, @10 -> 1.
    np.testing.assert_allclose(P.mean_matching_accuracy(err, np.array([1, 3, 5, 10])), [0.4, 0.8, 0.8, 1.0])
    assert P.mean_matching_accuracy(np.zeros(0), np.array([1, 2])).tolist() == [0.0, 0.0]


def test_corner_error_and_homography_metrics() -> None:
    shape = (11, 21)  # corners (0,0), (20,0), (0,10), (20,10)
    H_gt = np.eye(3)
    H_est = np.array([[1.0, 0, 3], [0, 1, 4], [0, 0, 1]])  # every corner off by 5
    assert P.corner_error(H_est, H_gt, shape) == pytest.approx(5.0)
    # Scaling by 2 about the origin: corner offsets 0, 20, 10, sqrt(500) -> mean.
    S = np.diag([2.0, 2.0, 1.0])
    assert P.corner_error(S, H_gt, shape) == pytest.approx((0 + 20 + 10 + np.sqrt(500)) / 4)
    assert P.corner_error(None, H_gt, shape) == float("inf")
    errs = np.array([0.5, 2.0, 3.0, np.inf])
    np.testing.assert_allclose(P.homography_accuracy(errs, np.array([1, 3, 5])), [0.25, 0.75, 0.75])
    # AUC@3: (1 - 0.5/3 + 1 - 2/3 + 0 + 0) / 4.
    assert P.error_auc(errs, 3.0) == pytest.approx((2.5 / 3 + 1 / 3) / 4)


def test_d2net_pair_recovers_exact_homography() -> None:
    rng = np.random.default_rng(1)
    H = np.array([[0.9, 0.1, 5], [-0.05, 1.1, -3], [1e-4, 2e-4, 1]])
    ka = rng.uniform(0, 300, (60, 2))
    kb = P.warp_points(ka, H)
    desc = rng.normal(size=(60, 16))
    out = P.d2net_pair_metrics(ka, desc, kb, desc, H, (300, 300), np.arange(1, 11))
    assert out["num_matches"] == 60 and out["mma"].tolist() == [1.0] * 10
    assert out["corner_error"] < 1e-3


def test_mutual_nearest_neighbours_of_keypoints_described_several_times() -> None:
    nan = np.nan
    # a0 at (0,0) and (5,5); a1 at (9,9) only. b0 at (5.1,5) and (1,1); b1 at (20,20) and (9,9.2).
    a = np.array([[[0.0, 0], [5, 5]], [[9, 9], [nan, nan]]])
    b = np.array([[[5.1, 5], [1, 1]], [[20, 20], [9, 9.2]]])
    # Closest copies: d(a0,b0) = 0.01 (a0's 2nd, b0's 1st), d(a0,b1) = 33.64, d(a1,b0) = 31.21,
    # d(a1,b1) = 0.04: keypoints a0-b0 and a1-b1 match, the missing copy never does.
    assert P.mutual_nearest_neighbours(a, b).tolist() == [[0, 0], [1, 1]]
    # one copy each: the same as plain (N, D) descriptors
    flat_a, flat_b = np.array([[0.0, 0], [1, 0], [5, 5]]), np.array([[0.9, 0], [0.1, 0], [9, 9]])
    assert np.array_equal(P.mutual_nearest_neighbours(flat_a[:, None], flat_b[:, None]),
                          P.mutual_nearest_neighbours(flat_a, flat_b))


def test_group_copies_and_back() -> None:
    from keynet.eval.detectors import Features
    from keynet.eval.run import group_copies

    desc = np.arange(8, dtype=np.float32).reshape(4, 2)  # rows of keypoints 1, 0, 0, 2
    grouped = group_copies(desc, np.array([1, 0, 0, 2]), 3)
    expected = np.array([[[2, 3], [4, 5]], [[0, 1], [np.nan, np.nan]], [[6, 7], [np.nan, np.nan]]])
    np.testing.assert_array_equal(grouped, expected)
    assert group_copies(desc, np.arange(4), 4) is desc  # one angle each: unchanged
    with pytest.raises(ValueError, match="at least one"):
        group_copies(desc, np.array([0, 0, 2, 2]), 3)
    feats = Features(np.array([[0.0, 0], [1, 1], [2, 2]]), np.ones(3), np.ones(3), grouped)
    kps, rows = feats.copies()
    assert kps[:, 0].tolist() == [0, 0, 1, 2] and rows[:, 0].tolist() == [2, 4, 0, 6]
