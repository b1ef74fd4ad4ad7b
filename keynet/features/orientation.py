"""Keypoint orientation: Key.Net detects position and scale only, so an angle is estimated afterwards.

Every estimator takes a grayscale ``(H, W)`` float32 image in ``[0, 1]``, keypoints ``(N, 2)`` and
radii ``(N,)`` (the conventions of ``keynet.features``) and returns ``(angles, index)``: angles ``(M,)``
in degrees in ``[0, 360)``, OpenCV's sense (the direction ``(cos a, sin a)`` in x-right, y-down image
coordinates, clockwise on screen), and ``index`` ``(M,)``, the input keypoint each angle belongs to.
``M == N`` and ``index == arange(N)`` unless extra orientations are asked for.

* ``UprightOrientation``: angle 0 for every keypoint;
* ``GradientOrientation``: SIFT's dominant-gradient estimate, vectorised over keypoints;
* ``OriNetOrientation``: kornia's ``OriNet`` (AffNet's orientation network) with local weights;
* ``PlusUpright``: another estimator's angles and angle 0 as well, every keypoint described twice.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
import torch
import torch.nn.functional as F

class Orientation(Protocol):
    name: str

    def compute(self, image: np.ndarray, keypoints: np.ndarray, scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


def _empty() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros(0, np.float32), np.zeros(0, np.int64)


class UprightOrientation:
    """Angle 0 for every keypoint (no rotation invariance)."""

    name = "upright"

    def compute(self, image: np.ndarray, keypoints: np.ndarray, scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = len(keypoints)
        return np.zeros(n, np.float32), np.arange(n, dtype=np.int64)


class GradientOrientation:
    """Dominant gradient direction in a Gaussian window at each keypoint's scale, as SIFT estimates it.

    A keypoint of radius ``r`` is treated as a SIFT keypoint of ``size = r / 3`` (the descriptor rule of
    ``keynet.features.descriptors``), so SIFT's window (Gaussian of sigma ``1.5 * size / 2 = r / 4``,
    cut at ``3`` sigma) becomes ``sigma = r / 4`` over a disc of radius ``0.75 r``. Gradients are read
    on a Gaussian octave pyramid (blur 1.6 level pixels, as SIFT's base layer) at the octave whose blur
    is at most the keypoint's ``r / 6``, bilinearly at a fixed ``(2 grid + 1)^2`` lattice over the
    window, so that all keypoints are handled by one ``grid_sample`` per octave and one weighted
    histogram (``bins`` bins, linear vote between the two nearest, smoothed with SIFT's
    ``[1, 4, 6, 4, 1] / 16``). The peak is refined with a parabola through it and its neighbours.
    With ``multiple=True`` every other local peak of at least ``peak_ratio`` times the highest
    adds an orientation (SIFT's rule), so a keypoint may appear several times in the output.

    Written here because the libraries do not offer it at given keypoints: OpenCV estimates SIFT's
    orientation only for its own detections, and kornia's ``PatchDominantGradientOrientation`` needs
    a patch per keypoint first (``extract_patches_from_pyramid``: about 85 ms for 2,048 keypoints on
    an 850x680 image, against about 15 ms for this whole estimate).
    """

    name = "gradient"
    default_conf: dict[str, Any] = {
        "bins": 36,
        "grid": 6,  # lattice half-width in samples
        "window": 0.75,  # radius of the window, in keypoint radii
        "sigma": 0.25,  # of the Gaussian weight, in keypoint radii
        "multiple": False,  # extra orientations for secondary peaks
        "peak_ratio": 0.8,
    }
    _base_sigma = 1.6  # SIFT's blur of a level, in level pixels
    _input_sigma = 0.5  # blur assumed in the input image

    def __init__(self, **conf: Any) -> None:
        unknown = set(conf) - set(self.default_conf)
        if unknown:
            raise TypeError(f"unknown option(s) {sorted(unknown)}; options are {sorted(self.default_conf)}")
        self.conf = c = {**self.default_conf, **conf}
        if c["bins"] < 4 or c["grid"] < 1 or c["window"] <= 0 or c["sigma"] <= 0 or not 0 < c["peak_ratio"] <= 1:
            raise ValueError(f"invalid orientation options {c}")
        g = torch.linspace(-c["window"], c["window"], 2 * c["grid"] + 1)
        off = torch.stack(torch.meshgrid(g, g, indexing="xy"), -1).reshape(-1, 2)  # (S, 2) as (x, y)
        d2 = (off**2).sum(1)
        keep = d2 <= c["window"] ** 2 + 1e-6
        self._offsets = off[keep]  # (S, 2), in keypoint radii
        self._weights = torch.exp(-d2[keep] / (2 * c["sigma"] ** 2))  # (S,)

    def _octaves(self, image: np.ndarray, needed: set[int]) -> list[torch.Tensor | None]:
        """Gradient maps (1, 2, h, w) as (gx, gy) of the octaves in ``needed`` (None for the others,
        up to the highest needed); octave o is 2^o times subsampled, blurred 1.6 of its pixels."""
        s0 = self._base_sigma
        level = cv2.GaussianBlur(image, (0, 0), math.sqrt(s0**2 - self._input_sigma**2))
        out: list[torch.Tensor | None] = []
        for o in range(max(needed) + 1):
            if o > 0:
                # pyrDown (5-tap binomial, sigma ~1.08 of the finer pixels, then every second pixel)
                # leaves sqrt(1.6^2 + 1.08^2) / 2 = 0.96 px; a small blur brings it to 1.6 px again.
                # Cheaper than SIFT's full-size blur then subsampling, the same scale.
                level = cv2.GaussianBlur(cv2.pyrDown(level), (0, 0), math.sqrt(s0**2 - (s0**2 + 1.08**2) / 4))
            if o not in needed:
                out.append(None)
                continue
            grad = np.empty((1, 2, *level.shape), np.float32)
            cv2.Sobel(level, cv2.CV_32F, 1, 0, dst=grad[0, 0], ksize=1, scale=0.5, borderType=cv2.BORDER_REPLICATE)
            cv2.Sobel(level, cv2.CV_32F, 0, 1, dst=grad[0, 1], ksize=1, scale=0.5, borderType=cv2.BORDER_REPLICATE)
            out.append(torch.from_numpy(grad))
        return out

    @torch.inference_mode()
    def histograms(self, image: np.ndarray, keypoints: np.ndarray, scales: np.ndarray) -> torch.Tensor:
        """Smoothed orientation histograms (N, bins); bin b is centred on the angle ``b * 360 / bins``."""
        c = self.conf
        kps = torch.as_tensor(np.asarray(keypoints, np.float32)).reshape(-1, 2)
        r = torch.as_tensor(np.asarray(scales, np.float32)).reshape(-1)
        n, nb = len(kps), c["bins"]
        sigma_kp = r / 6.0
        octave = torch.floor(torch.log2(torch.clamp(sigma_kp / self._base_sigma, min=1.0))).long()
        octave.clamp_(max=max(0, int(math.log2(max(min(image.shape), 8) / 8))))  # coarsest: 8 px or more
        grads = self._octaves(np.ascontiguousarray(image, np.float32), set(octave.tolist()) or {0})
        parts, order = [], []
        for o, g in enumerate(grads):
            if g is None:
                continue
            idx = torch.nonzero(octave == o).flatten()
            h, w = g.shape[-2:]
            # level pixel i is image pixel 2^o i; grid_sample wants [-1, 1] over the level's pixel centres
            to_grid = torch.tensor([2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)]) / 2**o
            grid = (kps[idx] * to_grid - 1)[:, None, :] + (r[idx, None, None] * to_grid) * self._offsets[None]
            parts.append(F.grid_sample(g, grid[None], mode="bilinear", align_corners=True)[0])  # (2, n_o, S)
            order.append(idx)
        gx, gy = torch.cat(parts, 1)  # (N, S) each, keypoints grouped by octave
        vote = torch.hypot(gx, gy) * self._weights[None]
        pos = torch.atan2(gy, gx) * (nb / (2 * math.pi))  # in (-nb/2, nb/2]
        pos = torch.where(pos < 0, pos + nb, pos)
        b0 = pos.floor()
        frac = pos - b0
        b0 = b0.long().clamp_(max=nb - 1)
        b1 = torch.where(b0 == nb - 1, 0, b0 + 1)
        row = torch.arange(n)[:, None] * nb
        hist = torch.zeros(n * nb)
        hist.index_add_(0, (row + b0).flatten(), (vote * (1 - frac)).flatten())
        hist.index_add_(0, (row + b1).flatten(), (vote * frac).flatten())
        hist = hist.view(n, nb)[torch.argsort(torch.cat(order))]  # back to the input order
        return (6 * hist + 4 * (hist.roll(1, 1) + hist.roll(-1, 1)) + hist.roll(2, 1) + hist.roll(-2, 1)) / 16

    def compute(self, image: np.ndarray, keypoints: np.ndarray, scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from keynet.parallel import caller_single_threaded

        if len(keypoints) == 0:
            return _empty()
        with caller_single_threaded():  # small tensors: waking torch's thread team costs more than it saves
            return self._peaks(self.histograms(image, keypoints, scales))

    def _peaks(self, hist: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Angles and keypoint indices of the histograms' peaks, refined by a parabola."""
        c = self.conf
        left, right = hist.roll(1, 1), hist.roll(-1, 1)
        if c["multiple"]:
            peak = (hist > left) & (hist > right) & (hist >= c["peak_ratio"] * hist.amax(1, keepdim=True))
            index, b = torch.nonzero(peak, as_tuple=True)
        else:
            index = torch.arange(len(hist))
            b = hist.argmax(1)
        centre, lo, hi = hist[index, b], left[index, b], right[index, b]
        curvature = lo - 2 * centre + hi
        shift = torch.where(curvature < 0, 0.5 * (lo - hi) / curvature.clamp(max=-1e-12), torch.zeros_like(curvature))
        angles = torch.remainder((b + shift) * (360.0 / c["bins"]), 360.0)
        return angles.numpy().astype(np.float32), index.numpy().astype(np.int64)


class OriNetOrientation:
    """kornia's ``OriNet`` (AffNet's orientation network, Mishkin et al. 2018) on a 32x32 patch of each
    keypoint's upright LAF (radius ``r``), through ``kornia.feature.LAFOrienter``; weights from a local
    file (default: ``weights/affnet/OriNet.pth`` of the shared data), never downloaded."""

    name = "orinet"

    def __init__(self, weights: str | Path | None = None, device: str | torch.device = "cpu") -> None:
        import kornia.feature as KF

        from keynet.paths import shared_data_dir
        from keynet.weights import load_state_dict_file

        state = load_state_dict_file(weights or shared_data_dir() / "weights" / "affnet" / "OriNet.pth")
        net = KF.OriNet(pretrained=False)
        # AffNet's file predates BatchNorm's `num_batches_tracked` counters (unused in eval mode).
        for key, value in net.state_dict().items():
            if key.endswith("num_batches_tracked"):
                state.setdefault(key, torch.zeros_like(value))
        net.load_state_dict(state, strict=True)
        self.device = torch.device(device)
        self._orienter = KF.LAFOrienter(patch_size=32, angle_detector=net).eval().to(self.device)

    @torch.inference_mode()
    def compute(self, image: np.ndarray, keypoints: np.ndarray, scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from kornia.feature import get_laf_orientation

        from .lafs import features_to_lafs

        n = len(keypoints)
        if n == 0:
            return _empty()
        img = torch.from_numpy(np.ascontiguousarray(image, np.float32))[None, None].to(self.device)
        lafs = features_to_lafs(keypoints, scales).to(self.device)[None]
        ori = get_laf_orientation(self._orienter(lafs, img))[0, :, 0]
        # kornia's orientation turns the patch axis counter-clockwise on screen: OpenCV's angle is its negative
        return torch.remainder(-ori, 360.0).cpu().numpy().astype(np.float32), np.arange(n, dtype=np.int64)


class PlusUpright:
    """Every keypoint at angle 0 and at the angle(s) of ``base``: described twice, a keypoint matches
    upright where nothing rotates and at its estimated angle where the image turns.

    An estimated angle is sometimes wrong, which costs an oriented descriptor matches on upright
    images (``docs/features.md``: 6-15 points of matching score on Oxford's upright sequences); the
    upright copy keeps those, for twice the descriptors. Like SIFT's extra orientations, the copies
    are separate keypoints in ``features.h5`` and for any matcher; the upright one comes first."""

    def __init__(self, base: Orientation) -> None:
        self.base = base
        self.name = f"{base.name}+upright"

    def compute(self, image: np.ndarray, keypoints: np.ndarray, scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        angles, index = self.base.compute(image, keypoints, scales)
        n = len(keypoints)
        angles = np.concatenate([np.zeros(n, np.float32), angles])
        index = np.concatenate([np.arange(n, dtype=np.int64), index])
        order = np.argsort(index, kind="stable")  # each keypoint's copies together, upright first
        return angles[order], index[order]


def make_orientation(spec: str, device: str | torch.device = "cpu", multiple: bool = False) -> Orientation:
    """``upright``, ``gradient`` (``multiple``: extra orientations), ``orinet`` or ``orinet:PATH``;
    ``gradient+upright`` or ``orinet[:PATH]+upright`` add an upright copy of every keypoint."""
    if spec.endswith("+upright") and spec != "upright+upright":
        return PlusUpright(make_orientation(spec[: -len("+upright")], device, multiple))
    kind, _, path = spec.partition(":")
    if spec == "upright":
        return UprightOrientation()
    if spec == "gradient":
        return GradientOrientation(multiple=multiple)
    if kind == "orinet":
        return OriNetOrientation(path or None, device)
    raise ValueError(
        f"unknown orientation {spec!r}; choose upright, gradient, orinet or orinet:PATH, optionally followed by +upright"
    )
