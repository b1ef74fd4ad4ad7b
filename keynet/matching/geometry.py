"""Two-view geometry from matched keypoints with OpenCV's USAC framework (MAGSAC++ scoring).

Inputs are matched keypoints ``kp0``, ``kp1`` (M, 2) as (x, y) in pixels, row k of each being one match.
Each estimator returns a ``TwoViewGeometry`` with the 3x3 model and its inlier mask (M,) bool; too
few matches, or no model found, give ``matrix=None`` and an all-False mask.

Thresholds are in pixels: the reprojection distance for a homography, the distance to the epipolar
line for F and E (for E, divided by the mean focal length, since it is estimated in normalised
coordinates so that the two cameras may differ).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

_MIN_MATCHES = {"H": 4, "F": 8, "E": 5}


@dataclass
class TwoViewGeometry:
    """``model`` ('H', 'F' or 'E'), ``matrix`` (3, 3) float64 or None, ``inliers`` (M,) bool."""

    model: str
    matrix: np.ndarray | None
    inliers: np.ndarray

    @property
    def num_inliers(self) -> int:
        return int(self.inliers.sum())


def _points(kp0: np.ndarray, kp1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p0, p1 = np.asarray(kp0, np.float64).reshape(-1, 2), np.asarray(kp1, np.float64).reshape(-1, 2)
    if len(p0) != len(p1):
        raise ValueError(f"matched keypoints differ in number: {len(p0)} and {len(p1)}")
    return p0, p1


def _result(model: str, matrix: np.ndarray | None, mask: np.ndarray | None, m: int) -> TwoViewGeometry:
    if matrix is None or mask is None or matrix.shape[0] < 3:
        return TwoViewGeometry(model, None, np.zeros(m, bool))
    matrix = matrix[:3]  # findEssentialMat may stack several solutions; the first is the best scored
    return TwoViewGeometry(model, matrix.astype(np.float64), mask.reshape(-1).astype(bool))


def estimate_homography(kp0, kp1, threshold: float = 3.0, confidence: float = 0.9999,
                        max_iters: int = 10000) -> TwoViewGeometry:
    """Homography H with ``x1 ~ H x0`` (MAGSAC++)."""
    p0, p1 = _points(kp0, kp1)
    if len(p0) < _MIN_MATCHES["H"]:
        return _result("H", None, None, len(p0))
    H, mask = cv2.findHomography(p0, p1, cv2.USAC_MAGSAC, threshold, maxIters=max_iters, confidence=confidence)
    return _result("H", H, mask, len(p0))


def estimate_fundamental(kp0, kp1, threshold: float = 1.0, confidence: float = 0.9999,
                         max_iters: int = 10000) -> TwoViewGeometry:
    """Fundamental matrix F with ``x1^T F x0 = 0`` (MAGSAC++)."""
    p0, p1 = _points(kp0, kp1)
    if len(p0) < _MIN_MATCHES["F"]:
        return _result("F", None, None, len(p0))
    F, mask = cv2.findFundamentalMat(p0, p1, cv2.USAC_MAGSAC, threshold, confidence, max_iters)
    return _result("F", F, mask, len(p0))


def normalise(kp: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Pixel keypoints (M, 2) as normalised image coordinates ``K^-1 [x, y, 1]`` (M, 2)."""
    kp = np.asarray(kp, np.float64).reshape(-1, 2)
    K = np.asarray(K, np.float64)
    return (kp - K[:2, 2]) / np.array([K[0, 0], K[1, 1]])


def estimate_essential(kp0, kp1, K0: np.ndarray, K1: np.ndarray, threshold: float = 1.0,
                       confidence: float = 0.9999, max_iters: int = 10000,
                       method: int = cv2.USAC_MAGSAC) -> TwoViewGeometry:
    """Essential matrix E with ``y1^T E y0 = 0`` for normalised coordinates y (cameras K0, K1 (3, 3));
    ``method`` another OpenCV robust method if wanted (e.g. ``cv2.RANSAC``)."""
    p0, p1 = _points(kp0, kp1)
    if len(p0) < _MIN_MATCHES["E"]:
        return _result("E", None, None, len(p0))
    f = np.mean([K0[0, 0], K0[1, 1], K1[0, 0], K1[1, 1]])
    E, mask = cv2.findEssentialMat(normalise(p0, K0), normalise(p1, K1), np.eye(3), method=method,
                                   prob=confidence, threshold=threshold / f, maxIters=max_iters)
    return _result("E", E, mask, len(p0))


def recover_pose(geometry: TwoViewGeometry, kp0, kp1, K0: np.ndarray, K1: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray] | None:
    """The relative pose (R (3, 3), t (3,) unit) with ``X1 = R X0 + t`` from an essential-matrix
    geometry and its inliers, by the cheirality test (``cv2.recoverPose``); None without a model."""
    if geometry.model != "E" or geometry.matrix is None or geometry.num_inliers < _MIN_MATCHES["E"]:
        return None
    p0, p1 = _points(kp0, kp1)
    y0, y1 = normalise(p0, K0), normalise(p1, K1)
    mask = geometry.inliers.astype(np.uint8)[:, None].copy()
    _, R, t, _ = cv2.recoverPose(geometry.matrix, y0, y1, np.eye(3), mask=mask)
    return R, t.reshape(3)
