"""Features as OpenCV ``cv2.KeyPoint`` lists and back.

``cv2.KeyPoint``: ``pt`` (x, y) with the same pixel-centre convention as ours, ``size`` a diameter in
pixels, ``angle`` in degrees in ``[0, 360)`` clockwise on screen (-1 when not computed), ``response``,
``octave``. A keypoint of radius ``r`` gets ``size = r / 3`` (``RADIUS_PER_OPENCV_SIZE``): OpenCV's SIFT
descriptor then covers exactly the square ``[-r, r]^2`` (see ``keynet.features.descriptors``).
"""

from __future__ import annotations

import cv2
import numpy as np

from keynet.features.descriptors import RADIUS_PER_OPENCV_SIZE, sift_octave_layer


def to_cv_keypoints(keypoints, scales, angles=None, scores=None, pack_octave: bool = False) -> list[cv2.KeyPoint]:
    """``cv2.KeyPoint`` per keypoint (N, 2) with radius (N,), angle (N,) in degrees (default 0) and
    score (N,) as ``response`` (default 0). ``pack_octave``: set ``octave`` the way SIFT packs it
    (octave | layer << 8) for the pyramid level whose blur matches the size, so that ``SIFT.compute``
    samples that level, as it does for its own keypoints."""
    xy = np.asarray(keypoints, np.float64).reshape(-1, 2)
    n = len(xy)
    size = np.asarray(scales, np.float64).reshape(n) / RADIUS_PER_OPENCV_SIZE
    angle = np.zeros(n) if angles is None else np.asarray(angles, np.float64).reshape(n)
    response = np.zeros(n) if scores is None else np.asarray(scores, np.float64).reshape(n)
    if pack_octave:
        octave, layer = sift_octave_layer(size)
        packed = (octave & 255) | (layer << 8)
    else:
        packed = np.zeros(n, np.int64)
    return [
        cv2.KeyPoint(x, y, s, a, r, int(o))
        for (x, y), s, a, r, o in zip(xy.tolist(), size.tolist(), angle.tolist(), response.tolist(), packed.tolist())
    ]


def from_cv_keypoints(kps) -> dict[str, np.ndarray]:
    """``keypoints`` (N, 2), ``scales`` (N,) radii, ``orientations`` (N,) degrees (0 where OpenCV has
    -1, no angle) and ``scores`` (N,) (``response``), float32, in the list's order."""
    n = len(kps)
    xy = np.array([k.pt for k in kps], np.float32).reshape(n, 2)
    size = np.array([k.size for k in kps], np.float32).reshape(n)
    angle = np.array([k.angle for k in kps], np.float32).reshape(n)
    return {
        "keypoints": xy,
        "scales": size * np.float32(RADIUS_PER_OPENCV_SIZE),
        "orientations": np.where(angle < 0, np.float32(0), angle),
        "scores": np.array([k.response for k in kps], np.float32).reshape(n),
    }
