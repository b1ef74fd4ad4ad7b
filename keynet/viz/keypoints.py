"""Keypoints drawn so that a person can see each one: the strongest few hundred, thin circles at their
true radius (plus a line for the orientation when there is one), coloured by score on a dimmed copy of
the image, under a legend line."""

from __future__ import annotations

import cv2
import numpy as np

_SHIFT = 4  # OpenCV fixed point: coordinates in 1/16 px, so circles sit at sub-pixel positions
_LEGEND_HEIGHT = 24


def _colours(values: np.ndarray) -> np.ndarray:
    """(N, 3) BGR colours of ``values`` by rank on OpenCV's turbo colour map (blue low, red high)."""
    if len(values) == 0:
        return np.zeros((0, 3), np.uint8)
    ranks = np.argsort(np.argsort(values, kind="stable"), kind="stable")
    levels = np.round(255 * ranks / max(len(values) - 1, 1)).astype(np.uint8)
    return cv2.applyColorMap(levels[:, None], cv2.COLORMAP_TURBO)[:, 0]


def legend_bar(width: int, text: str) -> np.ndarray:
    """A dark strip ``width`` px wide holding one line of ``text`` (BGR uint8)."""
    bar = np.full((_LEGEND_HEIGHT, width, 3), 32, np.uint8)
    cv2.putText(bar, text, (6, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    return bar


def dimmed(gray: np.ndarray, factor: float = 0.6) -> np.ndarray:
    """``gray`` (H, W) float in [0, 1] as a darker BGR uint8 canvas, so that drawings stand out."""
    return cv2.cvtColor(np.round(np.clip(gray, 0, 1) * 255 * factor).astype(np.uint8), cv2.COLOR_GRAY2BGR)


def draw_keypoints(
    gray: np.ndarray,
    keypoints: np.ndarray,
    scales: np.ndarray,
    scores: np.ndarray | None = None,
    orientations: np.ndarray | None = None,
    max_keypoints: int | None = 200,
    label: str = "",
) -> np.ndarray:
    """A BGR uint8 picture of ``gray`` with the strongest ``max_keypoints`` keypoints (None: all).

    Args:
        gray: (H, W) float image in [0, 1].
        keypoints: (N, 2) as (x, y), pixel centres at integers (drawn at sub-pixel precision).
        scales: (N,) radii in pixels: each circle has its keypoint's true radius.
        scores: (N,) higher is stronger; selects the keypoints drawn and colours them (turbo colour
            map by rank: blue weakest, red strongest). Without scores the first keypoints are drawn,
            coloured by scale.
        orientations: (N,) degrees (OpenCV's sense); each gets a line from the centre to its circle.
        label: what detected them (model name), for the legend line.

    Returns:
        (H + 24, W, 3): a legend line (count, label, colour key) above the dimmed image.
    """
    keypoints = np.asarray(keypoints, np.float64).reshape(-1, 2)
    scales = np.asarray(scales, np.float64).reshape(-1)
    n = len(keypoints)
    order = np.arange(n) if scores is None else np.argsort(-np.asarray(scores, np.float64), kind="stable")
    shown = order[: n if max_keypoints is None else max_keypoints]
    colour_values = scales if scores is None else np.asarray(scores, np.float64)
    colours = _colours(colour_values[shown])
    canvas = dimmed(gray)
    one = 1 << _SHIFT
    # weakest first, so the strongest are drawn on top
    for i, k in reversed(list(enumerate(shown))):
        (x, y), r = keypoints[k], scales[k]
        colour = tuple(int(c) for c in colours[i])
        centre = (int(round(x * one)), int(round(y * one)))
        cv2.circle(canvas, centre, int(round(r * one)), colour, 1, cv2.LINE_AA, _SHIFT)
        cv2.circle(canvas, centre, one, colour, -1, cv2.LINE_AA, _SHIFT)
        if orientations is not None:
            a = np.deg2rad(float(orientations[k]))
            tip = (int(round((x + r * np.cos(a)) * one)), int(round((y + r * np.sin(a)) * one)))
            cv2.line(canvas, centre, tip, colour, 1, cv2.LINE_AA, _SHIFT)
    key = "score" if scores is not None else "scale"
    text = f"{len(shown)} of {n} keypoints" + (f", {label}" if label else "") + f"; colour: {key}, blue low to red high"
    return np.vstack([legend_bar(canvas.shape[1], text), canvas])
