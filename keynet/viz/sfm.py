"""A COLMAP model seen from above: 3D points as grey dots, cameras as red dots with a short line
along their viewing direction, under a legend line (BGR uint8 image, OpenCV drawing).

"Above" is the mean of the cameras' up directions (the image's -y axis in the world), which for
handheld photos is close to the true vertical; the view is scaled to the 2nd-98th percentiles of
the points and cameras so that a few far points do not shrink the scene.
"""

from __future__ import annotations

import cv2
import numpy as np

from keynet.viz.keypoints import legend_bar


def _top_view_axes(up: np.ndarray) -> np.ndarray:
    """(2, 3) orthonormal axes of the plane perpendicular to ``up``."""
    up = up / np.linalg.norm(up)
    helper = np.eye(3)[np.argmin(np.abs(up))]
    a = np.cross(up, helper)
    a /= np.linalg.norm(a)
    return np.stack([a, np.cross(up, a)])


def draw_top_view(reconstruction, size: int = 800) -> np.ndarray:
    """The top view of a ``pycolmap.Reconstruction`` as a (size + legend, size, 3) BGR image."""
    images = [reconstruction.image(i) for i in reconstruction.reg_image_ids()]
    points = np.array([p.xyz for p in reconstruction.points3D.values()]).reshape(-1, 3)
    canvas = np.full((size, size, 3), 255, np.uint8)
    text = f"{len(images)} cameras (red), {len(points)} points (grey), top view"
    if not images:
        return np.vstack([canvas, legend_bar(size, text)])
    centres = np.array([im.projection_center() for im in images])
    # cam_from_world rotation rows are the camera axes in the world; row 1 is image +y (down).
    rotations = [im.cam_from_world().rotation.matrix() for im in images]
    axes = _top_view_axes(-np.mean([R[1] for R in rotations], axis=0))
    pts2, cams2 = points @ axes.T, centres @ axes.T
    both = np.vstack([pts2, cams2])
    lo, hi = np.percentile(both, 2, axis=0), np.percentile(both, 98, axis=0)
    lo, hi = np.minimum(lo, cams2.min(0)), np.maximum(hi, cams2.max(0))
    scale = 0.9 * size / max(float((hi - lo).max()), 1e-9)
    offset = size / 2 - scale * (lo + hi) / 2

    def pix(xy: np.ndarray) -> np.ndarray:
        p = xy * scale + offset
        return np.c_[p[:, 0], size - p[:, 1]].round().astype(np.int32)  # image y grows downwards

    for x, y in pix(pts2):
        if 0 <= x < size and 0 <= y < size:
            canvas[y, x] = (110, 110, 110)
    arrow = 0.05 * size / scale
    tips = pix((centres + arrow * np.array([R[2] for R in rotations])) @ axes.T)
    for (x, y), (tx, ty) in zip(pix(cams2), tips):
        cv2.line(canvas, (int(x), int(y)), (int(tx), int(ty)), (0, 0, 200), 2, cv2.LINE_AA)
        cv2.circle(canvas, (int(x), int(y)), 5, (0, 0, 230), -1, cv2.LINE_AA)
    return np.vstack([canvas, legend_bar(size, text)])
