"""Detectors under evaluation and the common descriptor used for the matching metrics.

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
  ``compat=kornia``, ``precision=bfloat16`` and the detector's numeric options, e.g.
  ``keynet-ref,compat=kornia`` or ``keynet,up_levels=0``;
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

RADIUS_PER_OPENCV_SIZE = 3.0
_SIFT_SIGMA = 1.6  # OpenCV SIFT's base sigma: KeyPoint.size = 2 * 1.6 * 2^(octave + layer / 3)
_SIFT_LAYERS = 3


@dataclass
class Features:
    """Detections of one image: ``keypoints`` (N, 2) float64 (x, y), ``scales`` (N,) radii,
    ``scores`` (N,), best first; ``descriptors`` (N, D) float32 once computed."""

    keypoints: np.ndarray
    scales: np.ndarray
    scores: np.ndarray
    descriptors: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.keypoints)

    def subset(self, idx: np.ndarray) -> "Features":
        """The features at indices ``idx`` (in that order)."""
        d = None if self.descriptors is None else self.descriptors[idx]
        return Features(self.keypoints[idx], self.scales[idx], self.scores[idx], d)


class Detector(Protocol):
    name: str

    def detect(self, image: np.ndarray) -> Features: ...


def to_uint8(image: np.ndarray) -> np.ndarray:
    """``(H, W)`` float image in ``[0, 1]`` as uint8 (exact for images read from 8-bit files)."""
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


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
    keynet_opts = {"model", "compat", "precision"} | numeric
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
        return KeyNetEval(spec, weights, options.get("model", "keynet"), options.get("compat"), num_keypoints, **conf)
    if kind == "kornia-keynet":
        return KorniaKeyNet(spec, path or reference_weights_path(), num_keypoints)
    known = sorted(_OPENCV_DETECTORS) + ["keynet[:PATH]", "keynet-ref", "kornia-keynet[:PATH]"]
    raise ValueError(f"unknown detector spec {spec!r}; known: {', '.join(known)}")


# -------------------------------------------------------------------------------------- descriptor


def _sift_octave_layer(size: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV SIFT pyramid octave and layer whose blur matches a keypoint of ``size``.

    SIFT computes a provided keypoint's descriptor on the Gaussian image its packed ``octave`` field
    names; a keypoint from another detector carries no such field, and computing a large keypoint at
    octave 0 would sample a huge window at full resolution. Layers 1..3 are preferred (those SIFT
    detects on); octave -1 (the 2x upsampled image) is the finest.
    """
    t = np.rint(_SIFT_LAYERS * np.log2(np.maximum(size, 1e-6) / (2 * _SIFT_SIGMA))).astype(np.int64)
    octave = np.floor_divide(t - 1, _SIFT_LAYERS)
    layer = t - _SIFT_LAYERS * octave  # in 1..3
    finest = octave < -1
    octave[finest], layer[finest] = -1, 1
    return octave, layer


class SIFTDescriptor:
    """Upright OpenCV SIFT descriptors at given keypoints and radii (``KeyPoint.size = r / 3``).

    Upright (angle 0) for every detector, so that detectors with and without an orientation are
    compared with the same descriptor; sequences with strong rotation (Oxford ``bark``, ``boat``)
    therefore match poorly for all of them. Output: ``(N, 128)`` float32, rows in input order.
    """

    name = "sift"

    def __init__(self) -> None:
        self._sift = cv2.SIFT_create()

    def compute(self, image: np.ndarray, keypoints: np.ndarray, scales: np.ndarray) -> np.ndarray:
        if len(keypoints) == 0:
            return np.zeros((0, 128), np.float32)
        size = np.asarray(scales, dtype=np.float64) / RADIUS_PER_OPENCV_SIZE
        octave, layer = _sift_octave_layer(size)
        packed = (octave & 255) | (layer << 8)
        kps = [
            cv2.KeyPoint(float(x), float(y), float(s), 0.0, 0.0, int(o))
            for (x, y), s, o in zip(np.asarray(keypoints, dtype=np.float64), size, packed)
        ]
        out_kps, desc = self._sift.compute(to_uint8(image), kps)
        if desc is None or len(out_kps) != len(kps):
            raise RuntimeError(f"SIFT returned {0 if desc is None else len(out_kps)} of {len(kps)} descriptors")
        return desc.astype(np.float32)


class TFeatDescriptor:
    """``kornia.feature.TFeat`` with local weights, on 32x32 upright patches of each keypoint's LAF.

    The patch spans ``[-r, r]`` around the keypoint (kornia's LAF extraction), the same square as the
    SIFT grid. The weights may be kornia's own TFeat layout or AffNet's ``HardTFeat.pth`` (its 8x8
    convolution head is the same map as kornia's linear layer). One difference from AffNet's model:
    kornia normalises a patch by its biased std (InstanceNorm) instead of the unbiased one, a
    ``sqrt(1024 / 1023)`` rescaling. Output: ``(N, 128)`` float32, L2-normalised, in input order.
    """

    def __init__(self, name: str, weights: str | Path) -> None:
        import kornia.feature as KF

        from keynet.weights import load_state_dict_file

        self.name = name
        state = load_state_dict_file(weights)
        if "classifier.1.weight" in state:  # AffNet's HardTFeatNet
            state = {
                "features.1.weight": state["features.0.weight"],
                "features.1.bias": state["features.0.bias"],
                "features.4.weight": state["features.3.weight"],
                "features.4.bias": state["features.3.bias"],
                "descr.0.weight": state["classifier.1.weight"].reshape(128, -1),
                "descr.0.bias": state["classifier.1.bias"],
            }
        self._net = KF.TFeat(pretrained=False).eval()
        self._net.load_state_dict(state, strict=True)

    @torch.inference_mode()
    def compute(self, image: np.ndarray, keypoints: np.ndarray, scales: np.ndarray) -> np.ndarray:
        import kornia.feature as KF

        from keynet.detector import keypoints_to_lafs

        if len(keypoints) == 0:
            return np.zeros((0, 128), np.float32)
        img = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
        lafs = keypoints_to_lafs(
            torch.from_numpy(np.asarray(keypoints, np.float32)), torch.from_numpy(np.asarray(scales, np.float32))
        )
        patches = KF.extract_patches_from_pyramid(img, lafs[None], PS=32)[0]
        desc = torch.cat([self._net(chunk) for chunk in patches.split(1024)])
        return torch.nn.functional.normalize(desc, dim=1).numpy()


def make_descriptor(spec: str) -> SIFTDescriptor | TFeatDescriptor:
    """The matching descriptor: ``sift``, ``hardtfeat`` (AffNet's HardTFeat from the shared data)
    or ``tfeat:PATH`` (a TFeat weights file in kornia's or AffNet's layout)."""
    from keynet.paths import shared_data_dir

    kind, _, path = spec.partition(":")
    if spec == "sift":
        return SIFTDescriptor()
    if spec == "hardtfeat":
        return TFeatDescriptor(spec, shared_data_dir() / "weights" / "affnet" / "HardTFeat.pth")
    if kind == "tfeat" and path:
        return TFeatDescriptor(spec, path)
    raise ValueError(f"unknown descriptor {spec!r}; available: sift, hardtfeat, tfeat:PATH")
