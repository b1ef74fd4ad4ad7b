"""A detector's position bias, measured from its own detections on an image and on the image turned by 180°.

A learned response need not peak on the structure that fires it: Key.Net's network is not
rotation-equivariant, and a trained one can peak a constant (bx, by) level pixels off, which both
views of a pair share when they are taken alike but which a rotation between them turns into a
position error (up to 2 |b| level pixels at 180°). Turning the image by 180° is exact (both axes
flipped, no resampling) and maps the bias b to -b, so a keypoint found at p + b in the image is
found at p - b in the turned image mapped back: half the difference of the two is b.
``rotation_offset`` pairs each keypoint with the nearest keypoint of the same level in the turned
image's detections and returns the mode of those halves (mean shift, robust to wrong pairs), negated
and in level pixels: the detector's ``offset`` option that cancels the bias.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch

from keynet.detector import ImageInput, KeyNetDetector
from keynet.io.image import to_image_batch


def _halves(detector: KeyNetDetector, image: ImageInput) -> np.ndarray:
    """(M, 2): for each keypoint paired across the 180° turn, half the position difference, in level pixels."""
    batch, batched = to_image_batch(image, detector.min_image_size)
    if batched and len(batch) != 1:
        raise ValueError(f"give images one at a time, not a batch of {len(batch)}")
    h, w = batch.shape[-2:]
    a = detector.detect(batch[0, 0])
    b = detector.detect(batch[0, 0].flip(-1, -2).contiguous())
    ka, sa = a["keypoints"].double(), a["scales"].double()
    kb, sb = b["keypoints"].double(), b["scales"].double()
    if len(ka) == 0 or len(kb) == 0:
        return np.zeros((0, 2))
    back = torch.stack([(w - 1) - kb[:, 0], (h - 1) - kb[:, 1]], 1)
    level = sa / detector.conf["scale_mult"]  # image pixels per level pixel, per keypoint of a
    # Both images have the same size, so the same levels and radii: pairs must share the radius.
    same_level = torch.isclose(sa[:, None], sb[None, :], rtol=1e-4, atol=0.0)
    d = torch.cdist(ka, back).masked_fill(~same_level, float("inf"))
    dist, j = d.min(1)
    near = dist < 2.0 * level  # the bias is well under a level pixel; farther pairs are other structures
    return (((ka[near] - back[j[near]]) / level[near, None]) / 2).numpy()


def rotation_offset(detector: KeyNetDetector, images: Iterable[ImageInput], window: float = 0.5,
                    iterations: int = 50) -> tuple[float, float]:
    """The ``offset`` (dx, dy), level pixels, that makes ``detector``'s keypoints agree across a 180° turn.

    Args:
        detector: the detector to calibrate, with the options it will run with (``subpixel`` on, as
            the bias is finer than a level pixel); its own ``offset`` is included, so the result is
            the offset to use instead of it.
        images: what ``KeyNetDetector.detect`` takes, one image each; photos the network was not
            tuned on, with a few hundred keypoints each at least.
        window: radius, level pixels, of the mean shift that finds the mode of the per-keypoint estimates.
        iterations: at most this many mean-shift steps (it stops when a step moves less than 1e-6).

    Returns:
        (dx, dy): the detector's offset plus the correction of the bias it still has.
    """
    halves = [_halves(detector, image) for image in images]
    est = np.concatenate(halves) if halves else np.zeros((0, 2))
    if len(est) == 0:
        raise ValueError("no keypoint was found again in a turned image: give photos with texture")
    centre = est.mean(0)
    for _ in range(iterations):
        inside = ((est - centre) ** 2).sum(1) <= window**2
        if not inside.any():
            break
        step = est[inside].mean(0) - centre
        centre = centre + step
        if np.abs(step).max() < 1e-6:
            break
    ox, oy = detector.conf["offset"]
    return ox - float(centre[0]), oy - float(centre[1])
