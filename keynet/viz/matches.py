"""Matches between two images drawn so that a person can follow them: the images side by side on a
dimmed canvas (same height), inlier matches as thin coloured lines (colour by position in image 0,
so crossing bundles stay apart), at most ``max_lines`` of them, outliers as small grey dots, under a
legend line with the counts."""

from __future__ import annotations

import cv2
import numpy as np

from keynet.viz.keypoints import dimmed, legend_bar

_SHIFT = 4  # OpenCV fixed point, 1/16 px


def draw_matches(gray0: np.ndarray, gray1: np.ndarray, kp0: np.ndarray, kp1: np.ndarray,
                 inliers: np.ndarray | None = None, text: str = "", max_lines: int = 150,
                 height: int = 600, seed: int = 0) -> np.ndarray:
    """Side-by-side picture (BGR uint8) of matches ``kp0[k] <-> kp1[k]`` ((M, 2) (x, y) each, in the
    pixels of ``gray0`` and ``gray1``, (H, W) float in [0, 1]); ``inliers`` (M,) bool (all if None)."""
    kp0, kp1 = np.asarray(kp0, np.float64).reshape(-1, 2), np.asarray(kp1, np.float64).reshape(-1, 2)
    inliers = np.ones(len(kp0), bool) if inliers is None else np.asarray(inliers, bool)
    s0, s1 = height / gray0.shape[0], height / gray1.shape[0]
    im0 = cv2.resize(dimmed(gray0), (round(gray0.shape[1] * s0), height), interpolation=cv2.INTER_AREA)
    im1 = cv2.resize(dimmed(gray1), (round(gray1.shape[1] * s1), height), interpolation=cv2.INTER_AREA)
    gap = 8
    canvas = np.hstack([im0, np.full((height, gap, 3), 255, np.uint8), im1])
    # keynet's integer pixel centres -> the resized image's: (x + 0.5) s - 0.5
    p0 = (kp0 + 0.5) * s0 - 0.5
    p1 = (kp1 + 0.5) * s1 - 0.5 + np.array([im0.shape[1] + gap, 0])
    fixed = lambda p: tuple(int(v) for v in np.round(p * (1 << _SHIFT)))  # noqa: E731
    for a, b in zip(p0[~inliers], p1[~inliers]):
        for p in (a, b):
            cv2.circle(canvas, fixed(p), 2 << _SHIFT, (150, 150, 150), -1, cv2.LINE_AA, _SHIFT)
    idx = np.flatnonzero(inliers)
    if len(idx) > max_lines:
        idx = np.sort(np.random.default_rng(seed).choice(idx, max_lines, replace=False))
    # hue from the position in image 0: neighbouring matches share a colour, so bundles are traceable
    hue = (np.arctan2(p0[idx, 1] - height / 2, p0[idx, 0] - im0.shape[1] / 2) + np.pi) / (2 * np.pi) * 179
    colours = cv2.cvtColor(np.stack([hue, np.full_like(hue, 230), np.full_like(hue, 255)], -1)
                           .astype(np.uint8)[None], cv2.COLOR_HSV2BGR)[0]
    for a, b, c in zip(p0[idx], p1[idx], colours):
        colour = tuple(int(v) for v in c)
        cv2.line(canvas, fixed(a), fixed(b), colour, 1, cv2.LINE_AA, _SHIFT)
        for p in (a, b):
            cv2.circle(canvas, fixed(p), 3 << _SHIFT, colour, 1, cv2.LINE_AA, _SHIFT)
    shown = f" ({len(idx)} drawn)" if len(idx) < inliers.sum() else ""
    legend = text or f"{int(inliers.sum())} inlier matches of {len(kp0)}{shown}; grey dots: outliers"
    return np.vstack([canvas, legend_bar(canvas.shape[1], legend)])
