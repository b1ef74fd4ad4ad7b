"""Drawing keypoints for inspection (kept apart from the model and detector)."""

from __future__ import annotations

import cv2
import numpy as np


def draw_keypoints(gray: np.ndarray, keypoints: np.ndarray, scales: np.ndarray, color=(0, 255, 0)) -> np.ndarray:
    """A BGR uint8 picture of ``gray`` (H, W) in [0, 1] with a circle of radius ``scale`` per keypoint.

    Keypoints are (N, 2) as (x, y) with pixel centres at integers, drawn at sub-pixel precision.
    """
    canvas = cv2.cvtColor(np.round(gray * 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)
    shift = 4  # OpenCV fixed-point: coordinates in 1/16 px
    for (x, y), s in zip(np.asarray(keypoints, np.float64), np.asarray(scales, np.float64)):
        centre = (int(round(x * (1 << shift))), int(round(y * (1 << shift))))
        cv2.circle(canvas, centre, int(round(s * (1 << shift))), color, 1, cv2.LINE_AA, shift)
    return canvas
