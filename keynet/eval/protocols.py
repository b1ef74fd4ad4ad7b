"""Evaluation protocols: Key.Net's HSequences benchmark and D2-Net's HPatches matching benchmark.

Conventions shared by every function here:

* keypoints are ``(N, 2)`` arrays of ``(x, y)``: x to the right, y down, pixel centres at integer
  coordinates (so the top-left pixel is centred at ``(0, 0)``);
* ``scales`` are ``(N,)`` radii in pixels, as the scale of kornia's local affine frames;
* ``H`` is a ``3x3`` homography mapping pixel coordinates of image *a* (the reference, ``1.ppm`` /
  ``img1``) to image *b*: ``x_b ~ H @ [x_a, y_a, 1]``;
* image shapes are ``(height, width)``;
* every score is a fraction in ``[0, 1]`` (the original Key.Net code prints percentages).

Key.Net protocol (``HSequences_bench`` of Barroso-Laguna et al.), choices pinned by tests:

1. Common area: pixel ``p`` of *a* is kept when it is at least 15 px from *a*'s border and the
   bilinear sample at ``H p`` of *b*'s "15 px border removed" indicator image is ``>= 0.75`` (what
   the original's ``cv2.warpPerspective`` with ``INTER_LINEAR`` and a zero border gives, computed
   exactly instead of at OpenCV's 1/32 px precision); symmetrically for *b* with ``H^-1``. A keypoint is inside when the mask pixel at its rounded position (half to even,
   as Python's ``round``) is set; keypoints rounding outside the image are outside.
2. The common-area filter comes first, then the top ``top_k`` keypoints by score (stable sort:
   equal scores keep detection order).
3. Keypoints of *b* are mapped to *a*'s frame: position by ``H^-1``, radius multiplied by
   ``sqrt|det J|`` with ``J`` the Jacobian of ``H^-1`` at the keypoint.
4. Overlap is the exact intersection-over-union of two circles. "L" (location only) uses radius 30
   for both; "SL" (scale and location) uses ``30 * r / max(r_a, r_b)`` for each of the pair.
5. A pair corresponds when its IoU is ``>= 0.6``. Correspondences are assigned greedily, one to
   one, in decreasing IoU (ties: lower index of *a*, then of *b*).
6. Repeatability = correspondences / ``min(#a, #b)`` (0 when either set is empty).
7. Matching score: mutual nearest neighbours of the descriptors of the kept keypoints, correct when
   the distance in *a*'s frame is ``< 5`` px (strict, as the original), divided by ``min(#a, #b)``.

D2-Net protocol (Dusmanu et al., CVPR 2019, ``hpatches_sequences`` notebook), choices:

* the top ``top_k`` keypoints of each image by score (no common-area filter);
* mutual nearest neighbours in L2 descriptor distance; a match is correct at threshold ``t`` when
  ``||H p_a - p_b|| <= t`` (measured in *b*, inclusive); MMA@t = correct / matches, 0 without
  matches;
* homography accuracy (as in SuperPoint / ASLFeat): ``cv2.findHomography`` with ``cv2.RANSAC``
  (3 px reprojection threshold, 2000 iterations, confidence 0.995) on the matches; the error is the
  mean distance between the four corner pixel centres ``(0, 0), (w-1, 0), (0, h-1), (w-1, h-1)`` of
  *a* mapped by the estimate and by the ground truth; fewer than 4 matches or a failed estimate
  give an infinite error. MHA@t = fraction of pairs with error ``<= t``; AUC@t = area under the
  cumulative error curve on ``[0, t]`` divided by ``t``.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

BORDER = 15  # common-area margin in pixels
MASK_THRESHOLD = 0.75  # on the bilinearly warped indicator image
L_RADIUS = 30.0  # circle radius of the "L" repeatability, and the largest radius of "SL"
OVERLAP_THRESHOLD = 0.6  # IoU needed for a correspondence
MATCH_THRESHOLD = 5.0  # pixels, Key.Net matching score (strict <)
RANSAC_THRESHOLD = 3.0
RANSAC_MAX_ITERS = 2000
RANSAC_CONFIDENCE = 0.995


# --------------------------------------------------------------------------------------- geometry


def warp_points(points: np.ndarray, H: np.ndarray) -> np.ndarray:
    """Map ``(N, 2)`` points through the homography ``H``; returns ``(N, 2)`` float64."""
    H = np.asarray(H, dtype=np.float64)
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    x, y = p[:, 0], p[:, 1]
    # Written out: a (N,2) @ (2,3) matmul is several times slower for the millions of mask pixels.
    w = H[2, 0] * x + H[2, 1] * y + H[2, 2]
    return np.stack([(H[0, 0] * x + H[0, 1] * y + H[0, 2]) / w, (H[1, 0] * x + H[1, 1] * y + H[1, 2]) / w], 1)


def homography_jacobian_det(points: np.ndarray, H: np.ndarray) -> np.ndarray:
    """``det J`` of ``x -> H x`` at each of the ``(N, 2)`` points; returns ``(N,)``.

    With ``w = h31 x + h32 y + h33`` and ``u = H x / w``, ``J = (H[:2, :2] - u h3^T) / w``.
    """
    H = np.asarray(H, dtype=np.float64)
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    w = p @ H[2, :2] + H[2, 2]
    u = warp_points(p, H)
    J = (H[None, :2, :2] - u[:, :, None] * H[None, 2:3, :2]) / w[:, None, None]
    return np.linalg.det(J)


def transfer_keypoints(
    points: np.ndarray, scales: np.ndarray, H: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Map keypoints through ``H``: positions by ``H``, radii times ``sqrt|det J|`` at each point.

    ``sqrt|det J|`` is the radius of the circle with the area of the locally mapped circle, which is
    what the original benchmark computes through the eigenvalues of the mapped ellipse.
    """
    factor = np.sqrt(np.abs(homography_jacobian_det(points, H)))
    return warp_points(points, H), np.asarray(scales, dtype=np.float64) * factor


def _border_indicator_1d(coord: np.ndarray, size: int, border: int) -> np.ndarray:
    """Linear interpolation at ``coord`` of a 1-D indicator that is 1 on ``[border, size-1-border]``.

    Zero outside the image, like ``cv2.BORDER_CONSTANT``; this is the separable factor of the
    bilinear sample of the 2-D indicator.
    """
    lo, hi = border, size - 1 - border
    if hi < lo:
        return np.zeros_like(coord)
    return np.clip(np.minimum(coord - (lo - 1), (hi + 1) - coord), 0.0, 1.0)


def _common_area(
    pixels: np.ndarray, M: np.ndarray, shape_from: tuple[int, int], shape_to: tuple[int, int]
) -> np.ndarray:
    """``(N,)`` bool: protocol step 1 at integer ``(N, 2)`` pixels of the image of ``shape_from``,
    with ``M`` mapping them into the other image (of ``shape_to``)."""
    h, w = shape_from
    x, y = pixels[:, 0], pixels[:, 1]
    inner = (x >= BORDER) & (x <= w - 1 - BORDER) & (y >= BORDER) & (y <= h - 1 - BORDER)
    q = warp_points(pixels, M)
    sample = _border_indicator_1d(q[:, 0], shape_to[1], BORDER) * _border_indicator_1d(q[:, 1], shape_to[0], BORDER)
    return inner & (sample >= MASK_THRESHOLD)


def common_area_masks(
    H: np.ndarray, shape_a: tuple[int, int], shape_b: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Boolean ``(h_a, w_a)`` and ``(h_b, w_b)`` masks of the area both images see (protocol step 1)."""
    H = np.asarray(H, dtype=np.float64)
    masks = []
    for M, s_from, s_to in ((H, shape_a, shape_b), (np.linalg.inv(H), shape_b, shape_a)):
        ys, xs = np.mgrid[0 : s_from[0], 0 : s_from[1]]
        masks.append(_common_area(np.stack([xs.ravel(), ys.ravel()], 1), M, s_from, s_to).reshape(s_from))
    return masks[0], masks[1]


def in_common_area(
    points: np.ndarray, M: np.ndarray, shape_from: tuple[int, int], shape_to: tuple[int, int]
) -> np.ndarray:
    """``(N,)`` bool: the common-area mask pixel at each point's rounded position (half to even) is
    set; ``M`` maps the points' image into the other one. Points rounding outside are outside.

    Equal to looking the points up in ``common_area_masks``, without computing the whole mask.
    """
    p = np.rint(np.asarray(points, dtype=np.float64).reshape(-1, 2))
    return _common_area(p, np.asarray(M, dtype=np.float64), shape_from, shape_to)


def top_k_indices(scores: np.ndarray, k: int | None) -> np.ndarray:
    """Indices of the ``k`` highest scores, best first; equal scores keep their input order."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    return order if k is None else order[:k]


# ------------------------------------------------------------------------------------ repeatability


def circle_intersection_area(r1: np.ndarray, r2: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Exact area of the intersection of circles of radii ``r1``, ``r2`` with centres ``d`` apart.

    Broadcasts its arguments; radii must be positive.
    """
    r1, r2, d = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (r1, r2, d)))
    area = np.zeros(r1.shape)
    inside = d <= np.abs(r1 - r2)
    area[inside] = np.pi * np.minimum(r1, r2)[inside] ** 2
    lens = ~inside & (d < r1 + r2)
    a, b, c = r1[lens], r2[lens], d[lens]
    # Half-angles subtended by the chord at each centre (law of cosines), clipped against rounding.
    alpha = np.arccos(np.clip((c**2 + a**2 - b**2) / (2 * c * a), -1.0, 1.0))
    beta = np.arccos(np.clip((c**2 + b**2 - a**2) / (2 * c * b), -1.0, 1.0))
    area[lens] = a**2 * (alpha - 0.5 * np.sin(2 * alpha)) + b**2 * (beta - 0.5 * np.sin(2 * beta))
    return area


def circle_iou(r1: np.ndarray, r2: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Intersection over union of two circles (broadcasting, see ``circle_intersection_area``)."""
    inter = circle_intersection_area(r1, r2, d)
    return inter / (np.pi * (np.asarray(r1) ** 2 + np.asarray(r2) ** 2) - inter)


def greedy_one_to_one(overlap: np.ndarray, threshold: float) -> np.ndarray:
    """Greedy one-to-one assignment on an ``(Na, Nb)`` overlap matrix.

    Pairs are taken in decreasing overlap (ties: row-major order) while the overlap is
    ``>= threshold``, skipping any pair whose row or column is already used.
    Returns ``(M, 2)`` int64 ``(row, col)`` pairs in the order taken.
    """
    rows, cols = np.nonzero(overlap >= threshold)  # row-major order
    order = np.argsort(-overlap[rows, cols], kind="stable")
    used_r = np.zeros(overlap.shape[0], dtype=bool)
    used_c = np.zeros(overlap.shape[1], dtype=bool)
    taken = []
    for i in order:
        r, c = rows[i], cols[i]
        if not (used_r[r] or used_c[c]):
            used_r[r] = used_c[c] = True
            taken.append((r, c))
    return np.asarray(taken, dtype=np.int64).reshape(-1, 2)


def _select(inside: np.ndarray, scores: np.ndarray, top_k: int | None) -> np.ndarray:
    """Protocol step 2: indices of the top-k keypoints inside the common area, best first."""
    idx = np.flatnonzero(inside)
    return idx[top_k_indices(np.asarray(scores)[idx], top_k)]


def keynet_repeatability(
    kps_a: np.ndarray,
    scales_a: np.ndarray,
    scores_a: np.ndarray,
    kps_b: np.ndarray,
    scales_b: np.ndarray,
    scores_b: np.ndarray,
    H: np.ndarray,
    shape_a: tuple[int, int],
    shape_b: tuple[int, int],
    top_k: int | None = 1000,
) -> dict[str, Any]:
    """Key.Net repeatability of one image pair (steps 1-6 of the module docstring).

    Args:
        kps_a, kps_b: ``(Na, 2)``, ``(Nb, 2)`` keypoints ``(x, y)`` of images *a* and *b*.
        scales_a, scales_b: ``(Na,)``, ``(Nb,)`` radii in pixels.
        scores_a, scores_b: ``(Na,)``, ``(Nb,)`` detection scores, higher is better.
        H: ``3x3`` homography from *a* to *b* pixel coordinates.
        shape_a, shape_b: ``(height, width)`` of the images.
        top_k: keypoints kept per image after the common-area filter; ``None`` keeps all.

    Returns:
        ``rep_L``, ``rep_SL`` (fractions), ``num_a``, ``num_b`` (keypoints kept), ``num_corr_L``,
        ``num_corr_SL``, and for the matching score: ``idx_a``, ``idx_b`` (indices of the kept
        keypoints into the inputs, best first) and ``kps_b_in_a`` (``(num_b, 2)``, the kept
        keypoints of *b* mapped into *a*).
    """
    kps_a = np.asarray(kps_a, dtype=np.float64).reshape(-1, 2)
    kps_b = np.asarray(kps_b, dtype=np.float64).reshape(-1, 2)
    H = np.asarray(H, dtype=np.float64)
    H_inv = np.linalg.inv(H)
    idx_a = _select(in_common_area(kps_a, H, shape_a, shape_b), scores_a, top_k)
    idx_b = _select(in_common_area(kps_b, H_inv, shape_b, shape_a), scores_b, top_k)
    pa, ra = kps_a[idx_a], np.asarray(scales_a, dtype=np.float64)[idx_a]
    pb, rb = transfer_keypoints(kps_b[idx_b], np.asarray(scales_b)[idx_b], H_inv)

    dist = np.linalg.norm(pa[:, None, :] - pb[None, :, :], axis=-1)
    iou_l = circle_iou(L_RADIUS, L_RADIUS, dist)
    ra_, rb_ = np.broadcast_arrays(ra[:, None], rb[None, :])
    norm = L_RADIUS / np.maximum(ra_, rb_)
    iou_sl = circle_iou(ra_ * norm, rb_ * norm, dist)

    n = min(len(idx_a), len(idx_b))
    corr_l = len(greedy_one_to_one(iou_l, OVERLAP_THRESHOLD))
    corr_sl = len(greedy_one_to_one(iou_sl, OVERLAP_THRESHOLD))
    return {
        "rep_L": corr_l / n if n else 0.0,
        "rep_SL": corr_sl / n if n else 0.0,
        "num_a": int(len(idx_a)),
        "num_b": int(len(idx_b)),
        "num_corr_L": int(corr_l),
        "num_corr_SL": int(corr_sl),
        "idx_a": idx_a,
        "idx_b": idx_b,
        "kps_b_in_a": pb,
    }


# ----------------------------------------------------------------------------------------- matching


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(Na, Nb)`` squared L2 distances of ``(Na, D)`` and ``(Nb, D)`` rows, in float64 so that ties
    and rounding do not depend on the BLAS in use; NaN rows (missing copies) are infinitely far."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.nan_to_num(d2, nan=np.inf)


def mutual_nearest_neighbours(desc_a: np.ndarray, desc_b: np.ndarray) -> np.ndarray:
    """Mutual nearest neighbours in L2 distance of ``(Na, D)`` and ``(Nb, D)`` descriptors.

    A keypoint described several times (``(N, C, D)``, NaN for missing copies) is at the distance
    of its closest pair of copies, so that keypoints, not copies, are matched and counted.

    Returns ``(M, 2)`` int64 index pairs ``(i_a, i_b)`` in increasing ``i_a``; distance ties go to
    the lower index.
    """
    a, b = np.asarray(desc_a), np.asarray(desc_b)
    if len(a) == 0 or len(b) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    a = a.reshape(len(a), -1, a.shape[-1])
    b = b.reshape(len(b), -1, b.shape[-1])
    d2 = _squared_distances(a[:, 0], b[:, 0])
    for i in range(a.shape[1]):
        for j in range(b.shape[1]):
            if i or j:
                np.minimum(d2, _squared_distances(a[:, i], b[:, j]), out=d2)
    nn_ab = d2.argmin(1)
    nn_ba = d2.argmin(0)
    ia = np.flatnonzero(nn_ba[nn_ab] == np.arange(len(a)))
    return np.stack([ia, nn_ab[ia]], 1).astype(np.int64)


def keynet_matching_score(
    desc_a: np.ndarray,
    desc_b: np.ndarray,
    kps_a: np.ndarray,
    kps_b_in_a: np.ndarray,
    threshold: float = MATCH_THRESHOLD,
) -> float:
    """Key.Net matching score (step 7): correct mutual-NN matches / ``min(Na, Nb)``.

    Args:
        desc_a, desc_b: ``(Na, D)``, ``(Nb, D)`` descriptors of the kept keypoints.
        kps_a: ``(Na, 2)`` kept keypoints of *a*; kps_b_in_a: ``(Nb, 2)`` kept keypoints of *b* in
            *a*'s frame (``keynet_repeatability``'s ``kps_b_in_a``).
        threshold: a match is correct when its distance in *a* is ``< threshold`` pixels.
    """
    n = min(len(desc_a), len(desc_b))
    if n == 0:
        return 0.0
    m = mutual_nearest_neighbours(desc_a, desc_b)
    err = np.linalg.norm(np.asarray(kps_a)[m[:, 0]] - np.asarray(kps_b_in_a)[m[:, 1]], axis=1)
    return float(np.count_nonzero(err < threshold)) / n


def match_errors(kps_a: np.ndarray, kps_b: np.ndarray, matches: np.ndarray, H: np.ndarray) -> np.ndarray:
    """``(M,)`` reprojection errors ``||H p_a - p_b||`` in *b*'s pixels of ``(M, 2)`` index pairs."""
    pa = np.asarray(kps_a, dtype=np.float64)[matches[:, 0]]
    pb = np.asarray(kps_b, dtype=np.float64)[matches[:, 1]]
    return np.linalg.norm(warp_points(pa, H) - pb, axis=1)


def mean_matching_accuracy(errors: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """D2-Net MMA: for each threshold ``t``, the fraction of ``errors <= t`` (0 without matches)."""
    errors = np.asarray(errors, dtype=np.float64)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if errors.size == 0:
        return np.zeros(thresholds.shape)
    return (errors[None, :] <= thresholds[:, None]).mean(1)


def corner_error(H_est: np.ndarray | None, H_gt: np.ndarray, shape_a: tuple[int, int]) -> float:
    """Mean distance of *a*'s four corner pixel centres mapped by ``H_est`` and by ``H_gt``.

    ``inf`` when ``H_est`` is ``None`` (no estimate).
    """
    if H_est is None:
        return float("inf")
    h, w = shape_a
    corners = np.array([[0, 0], [w - 1, 0], [0, h - 1], [w - 1, h - 1]], dtype=np.float64)
    return float(np.linalg.norm(warp_points(corners, H_est) - warp_points(corners, H_gt), axis=1).mean())


def estimate_homography(pts_a: np.ndarray, pts_b: np.ndarray) -> np.ndarray | None:
    """RANSAC homography from ``(M, 2)`` matched points of *a* to *b*; ``None`` when it fails.

    OpenCV's RANSAC seeds its own generator on every call, so the result is deterministic.
    """
    if len(pts_a) < 4:
        return None
    H, _ = cv2.findHomography(
        np.asarray(pts_a, dtype=np.float64),
        np.asarray(pts_b, dtype=np.float64),
        cv2.RANSAC,
        RANSAC_THRESHOLD,
        maxIters=RANSAC_MAX_ITERS,
        confidence=RANSAC_CONFIDENCE,
    )
    return None if H is None else H


def homography_accuracy(errors: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """For each threshold ``t``, the fraction of pairs whose corner error is ``<= t``."""
    errors = np.asarray(errors, dtype=np.float64)
    if errors.size == 0:
        return np.zeros(len(thresholds))
    return (errors[None, :] <= np.asarray(thresholds, dtype=np.float64)[:, None]).mean(1)


def error_auc(errors: np.ndarray, threshold: float) -> float:
    """Area under the cumulative error curve on ``[0, threshold]``, divided by ``threshold``.

    The curve is ``t -> fraction of errors <= t``; it is a step function, integrated exactly.
    Equals ``mean(max(0, 1 - e / threshold))`` over all pairs (infinite errors contribute 0). This
    exact integral differs slightly from SuperGlue's, which interpolates linearly between errors.
    """
    errors = np.asarray(errors, dtype=np.float64)
    if errors.size == 0:
        return 0.0
    return float(np.clip(1.0 - errors / threshold, 0.0, None).mean())


def d2net_pair_metrics(
    kps_a: np.ndarray,
    desc_a: np.ndarray,
    kps_b: np.ndarray,
    desc_b: np.ndarray,
    H: np.ndarray,
    shape_a: tuple[int, int],
    thresholds: np.ndarray,
) -> dict[str, Any]:
    """D2-Net metrics of one pair whose keypoints are already the top-k by score.

    Returns ``mma`` (``(T,)``, MMA at each threshold), ``num_matches`` and ``corner_error``
    (mean corner error of the RANSAC homography in *b*'s pixels, ``inf`` on failure).
    """
    m = mutual_nearest_neighbours(desc_a, desc_b)
    err = match_errors(kps_a, kps_b, m, H)
    H_est = estimate_homography(np.asarray(kps_a)[m[:, 0]], np.asarray(kps_b)[m[:, 1]])
    return {
        "mma": mean_matching_accuracy(err, thresholds),
        "num_matches": int(len(m)),
        "corner_error": corner_error(H_est, H, shape_a),
    }
