"""Detectors under evaluation: OpenCV's, Key.Net (keynet's and the reference weights) and kornia's.

Every detector maps an ``(H, W)`` float32 grayscale image in ``[0, 1]`` to ``Features``: keypoints
``(N, 2)`` as ``(x, y)`` (x right, y down, pixel centres at integer coordinates), ``scales`` ``(N,)``
as radii in pixels (the scale of a kornia LAF) and ``scores`` ``(N,)``, sorted by decreasing score
(stable: OpenCV's output order breaks ties), at most ``num_keypoints`` of them. The budget
``num_keypoints`` counts unique keypoints: SIFT detects without a cap, its extra-orientation copies
are merged, and then the best ``num_keypoints`` are kept.

Each OpenCV detector's ``KeyPoint.size`` means something of its own; the radius ``r`` is the region
its own descriptor covers (``OPENCV_RADIUS``, read from OpenCV's sources):

* SIFT and KAZE: ``size = 2 sigma``; ``r = 3 size = 6 sigma``, the half-width of SIFT's 4x4 grid
  of ``3 sigma`` cells (so a SIFT keypoint described at ``r`` gets OpenCV's own SIFT descriptor);
* AKAZE: ``size = 2 * 1.5 sigma`` (twice its derivative scale); ``r = 2 size = 6 sigma``;
* Harris-Laplace: ``size = 6 sigma_I`` (integration scale); ``r = size = 6 sigma_I``;
* ORB: ``size`` = its 31 px patch at the keypoint's pyramid level (a diameter); ``r = size / 2``;
* FAST, GFTT, Harris: no scale (``size`` is FAST's 7 px test circle or GFTT's 3 px block);
  ``r = 15.5``, the 31 px patch that ORB describes at full resolution.

The descriptor then samples the circle of radius ``r`` (``SIFTDescriptor``: ``KeyPoint.size = r / 3``).

Detector specs (``make_detector``), options after commas as ``key=value``:

* ``sift``, ``orb``, ``fast``, ``gftt``, ``harris`` (GFTT with the Harris measure), ``akaze``,
  ``kaze``, ``harris-laplace``: OpenCV (AKAZE, KAZE, Harris-Laplace from ``cv2.xfeatures2d`` when
  the main module lacks them);
* ``keynet`` (the package's shipped weights), ``keynet:PATH`` (any weights file), ``keynet-ref``
  (the reference ``keynet_pytorch.pth`` in the shared data); options ``model=keynet|tiny``,
  ``compat=kornia``, ``precision=bfloat16``, ``offset=DX:DY`` (level pixels) or ``offset=shipped``
  (the shipped weights' calibrated one, ``keynet.weights.SHIPPED_OFFSETS``) and the detector's
  numeric options, e.g. ``keynet-ref,compat=kornia`` or ``keynet,up_levels=0``;
* ``kornia-keynet`` / ``kornia-keynet:PATH``: ``kornia.feature.KeyNetDetector`` with the reference
  (or given) weights, a cross-check of our detector.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import cv2
import numpy as np
import torch

from keynet.features.descriptors import to_uint8



@dataclass
class Features:
    """Detections of one image: ``keypoints`` (N, 2) float64 (x, y), ``scales`` (N,) radii,
    ``scores`` (N,), best first; ``descriptors`` (N, D) float32 once computed, or (N, C, D) with NaN
    rows for a keypoint described at fewer than C angles (``keynet.eval.run.group_copies``)."""

    keypoints: np.ndarray
    scales: np.ndarray
    scores: np.ndarray
    descriptors: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.keypoints)

    def copies(self) -> tuple[np.ndarray, np.ndarray]:
        """Keypoints (M, 2) and descriptors (M, D), one row per described copy, as a pipeline stores them."""
        d = self.descriptors
        if d is None or d.ndim == 2:
            return self.keypoints, d
        i, c = np.nonzero(~np.isnan(d[..., 0]))
        return self.keypoints[i], d[i, c]

    def subset(self, idx: np.ndarray) -> "Features":
        """The features at indices ``idx`` (in that order)."""
        d = None if self.descriptors is None else self.descriptors[idx]
        return Features(self.keypoints[idx], self.scales[idx], self.scores[idx], d)


class Detector(Protocol):
    name: str

    def detect(self, image: np.ndarray) -> Features: ...


def _sorted_features(kps: np.ndarray, scales: np.ndarray, scores: np.ndarray, limit: int) -> Features:
    order = np.argsort(-scores, kind="stable")[:limit]
    return Features(kps[order], scales[order], scores[order])


# ----------------------------------------------------------------------------------------- OpenCV


def _cv_factory(name: str) -> Callable[..., Any]:
    """``cv2.<name>`` or, in OpenCV 5 builds with the contrib modules, ``cv2.xfeatures2d.<name>``."""
    for module in (cv2, getattr(cv2, "xfeatures2d", None)):
        if module is not None and hasattr(module, name):
            return getattr(module, name)
    raise RuntimeError(f"this OpenCV build has no {name} (install opencv-contrib-python)")


_OPENCV_DETECTORS: dict[str, Callable[[int], Any]] = {
    "sift": lambda n: cv2.SIFT_create(),  # uncapped: its cap would count the extra-orientation copies
    "orb": lambda n: cv2.ORB_create(nfeatures=n),
    "fast": lambda n: cv2.FastFeatureDetector_create(),
    "gftt": lambda n: cv2.GFTTDetector_create(maxCorners=n),
    "harris": lambda n: cv2.GFTTDetector_create(maxCorners=n, useHarrisDetector=True),
    "akaze": lambda n: _cv_factory("AKAZE_create")(),
    "kaze": lambda n: _cv_factory("KAZE_create")(),
    "harris-laplace": lambda n: _cv_factory("HarrisLaplaceFeatureDetector_create")(),
}


_CORNER_RADIUS = 15.5  # ORB's 31 px patch, for detectors without a scale
OPENCV_RADIUS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "sift": lambda size: 3.0 * size,
    "kaze": lambda size: 3.0 * size,
    "akaze": lambda size: 2.0 * size,
    "harris-laplace": lambda size: size,
    "orb": lambda size: 0.5 * size,
    "fast": lambda size: np.full_like(size, _CORNER_RADIUS),
    "gftt": lambda size: np.full_like(size, _CORNER_RADIUS),
    "harris": lambda size: np.full_like(size, _CORNER_RADIUS),
}


class OpenCVDetector:
    """An OpenCV ``Feature2D`` detector; score = ``KeyPoint.response``, radius from ``KeyPoint.size``
    by the detector's own convention (``OPENCV_RADIUS``, module docstring).

    Keypoints repeated at the same position and size (SIFT's extra orientations) are kept once, with
    the best score: the evaluation describes every keypoint upright, so copies would be identical.
    """

    def __init__(self, name: str, num_keypoints: int = 2048) -> None:
        if name not in _OPENCV_DETECTORS:
            raise ValueError(f"unknown OpenCV detector {name!r}; choose one of {sorted(_OPENCV_DETECTORS)}")
        self.name = name
        self.num_keypoints = num_keypoints
        self._impl = _OPENCV_DETECTORS[name](num_keypoints)

    def detect(self, image: np.ndarray) -> Features:
        kps = self._impl.detect(to_uint8(image), None)
        xy = np.array([k.pt for k in kps], dtype=np.float64).reshape(-1, 2)
        size = np.array([k.size for k in kps], dtype=np.float64)
        score = np.array([k.response for k in kps], dtype=np.float64)
        feats = _sorted_features(xy, OPENCV_RADIUS[self.name](size), score, len(kps))
        _, first = np.unique(np.c_[feats.keypoints, feats.scales], axis=0, return_index=True)
        return feats.subset(np.sort(first)[: self.num_keypoints])


# ----------------------------------------------------------------------------------------- Key.Net


class KeyNetEval:
    """``keynet.detector.KeyNetDetector`` as an evaluation detector."""

    def __init__(
        self,
        name: str,
        weights: str | Path | None,
        model: str = "keynet",
        compat: str | None = None,
        num_keypoints: int = 2048,
        **conf: Any,
    ) -> None:
        from keynet.detector import KeyNetDetector

        self.name = name
        self._det = KeyNetDetector(weights=weights, model=model, num_keypoints=num_keypoints, compat=compat, **conf)

    def detect(self, image: np.ndarray) -> Features:
        out = self._det.detect(image)
        return Features(
            out["keypoints"].double().numpy(), out["scales"].double().numpy(), out["scores"].double().numpy()
        )


class KorniaKeyNet:
    """``kornia.feature.KeyNetDetector`` with local weights (no download); radius = LAF scale,
    entries with zero response (kornia's padding) dropped."""

    def __init__(self, name: str, weights: str | Path, num_keypoints: int = 2048) -> None:
        import kornia.feature as KF

        from keynet.weights import load_state_dict_file

        self.name = name
        self._det = KF.KeyNetDetector(pretrained=False, num_features=num_keypoints).eval()
        self._det.model.load_state_dict(load_state_dict_file(weights), strict=True)

    @torch.inference_mode()
    def detect(self, image: np.ndarray) -> Features:
        import kornia.feature as KF

        lafs, responses = self._det(torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None])
        # kornia pads to num_features with zero-response entries when there are fewer maxima.
        real = responses[0] > 0
        kps = KF.get_laf_center(lafs)[0][real].double().numpy()
        scales = KF.get_laf_scale(lafs)[0, real, 0, 0].double().numpy()
        return _sorted_features(kps, scales, responses[0][real].double().numpy(), len(kps))


def make_detector(spec: str, num_keypoints: int = 2048) -> Detector:
    """A detector from a spec string (see the module docstring); its ``name`` is the spec."""
    from keynet.paths import reference_weights_path

    head, *opts = spec.split(",")
    options = dict(o.split("=", 1) for o in opts if "=" in o)
    if any("=" not in o for o in opts):
        raise ValueError(f"detector spec {spec!r}: options must be key=value")
    kind, _, path = head.partition(":")
    from keynet.detector import KeyNetDetector

    # Key.Net takes `model`, `compat`, `precision` and its numeric detector options, e.g.
    # `keynet,up_levels=0`.
    numeric = {k for k, v in KeyNetDetector.default_conf.items() if isinstance(v, (int, float)) and k != "num_keypoints"}
    keynet_opts = {"model", "compat", "precision", "offset"} | numeric
    allowed = {"keynet": keynet_opts, "keynet-ref": keynet_opts}.get(kind, set())
    if set(options) - allowed:
        raise ValueError(f"detector spec {spec!r}: unknown option(s) {sorted(set(options) - allowed)}")
    if kind in _OPENCV_DETECTORS and not path:
        return OpenCVDetector(kind, num_keypoints)
    if kind == "keynet" or (kind == "keynet-ref" and not path):
        weights = reference_weights_path() if kind == "keynet-ref" else (path or None)
        conf = {k: type(KeyNetDetector.default_conf[k])(float(v)) for k, v in options.items() if k in numeric}
        if "precision" in options:
            conf["precision"] = options["precision"]
        if "offset" in options:
            from keynet.weights import parse_offset

            try:
                conf["offset"] = parse_offset(options["offset"], options.get("model", "keynet"), weights)
            except ValueError as e:
                raise ValueError(f"detector spec {spec!r}: {e}") from None
        return KeyNetEval(spec, weights, options.get("model", "keynet"), options.get("compat"), num_keypoints, **conf)
    if kind == "kornia-keynet":
        return KorniaKeyNet(spec, path or reference_weights_path(), num_keypoints)
    known = sorted(_OPENCV_DETECTORS) + ["keynet[:PATH]", "keynet-ref", "kornia-keynet[:PATH]"]
    raise ValueError(f"unknown detector spec {spec!r}; known: {', '.join(known)}")
