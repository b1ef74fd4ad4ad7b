"""``Extractor``: Key.Net keypoints, an orientation per keypoint and a descriptor, in one call."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from keynet.detector import ImageInput, KeyNetDetector
from keynet.io.image import load_image, to_float_gray
from keynet.weights import parse_offset

from .descriptors import Descriptor, make_descriptor
from .orientation import Orientation, make_orientation


class Extractor:
    """Key.Net local features: detection, orientation, description (conventions: ``keynet.features``).

    Args:
        detector: a ready ``KeyNetDetector``; None builds one from ``model``, ``weights``,
            ``num_keypoints``, ``device`` and any other ``KeyNetDetector`` option in ``conf``
            (``offset="shipped"``: the shipped weights' calibrated offset, ``keynet.weights.SHIPPED_OFFSETS``).
        **conf: overrides of ``default_conf``; ``descriptor`` and ``orientation`` take a spec string
            (``make_descriptor``, ``make_orientation``) or an object of the ``Descriptor`` /
            ``Orientation`` protocol, e.g. a descriptor of one's own.

    Example:
        >>> ext = Extractor(descriptor="sift", orientation="gradient", num_keypoints=2048)
        >>> feats = ext.extract("photo.jpg")
        >>> feats["keypoints"].shape, feats["descriptors"].shape  # (N, 2), (N, 128)
    """

    default_conf: dict[str, Any] = {
        "descriptor": "sift",  # sift, rootsift, hardtfeat, ARCH:PATH, a weights file, or a Descriptor
        "orientation": "gradient",  # upright, gradient, orinet[:PATH], or an Orientation
        "multiple_orientations": False,  # gradient: a keypoint again for each secondary peak
        "num_keypoints": 2048,
        "model": "keynet",  # or "tiny"
        "weights": None,  # a Key.Net weights file instead of the shipped ones
        "device": "cpu",
        "resize": None,  # longer side, px: larger images are extracted shrunk, keypoints mapped back
        "subpixel": True,  # keypoints at the response's parabola vertex (KeyNetDetector's subpixel)
        "level_gamma": 1.0,  # coarse levels favoured in the top-k (KeyNetDetector's level_gamma; docs/training.md)
        "input_std": 0.2,  # images scaled to this contrast first: keypoints independent of the exposure
    }

    # Options of the Extractor's default_conf that it hands to KeyNetDetector under the same name, with
    # values other than the detector's paper-faithful defaults.
    detection_options = ("subpixel", "level_gamma", "input_std")

    @classmethod
    def default_detection(cls) -> dict[str, Any]:
        """The ``KeyNetDetector`` options an Extractor sets by default: ``detection_options`` of ``default_conf``."""
        return {k: cls.default_conf[k] for k in cls.detection_options}

    def __init__(self, detector: KeyNetDetector | None = None, **conf: Any) -> None:
        own = {k: v for k, v in conf.items() if k in self.default_conf}
        detector_conf = {k: v for k, v in conf.items() if k not in self.default_conf}
        self.conf = c = {**self.default_conf, **own}
        if detector is None:
            if detector_conf.get("offset") == "shipped":  # KeyNetDetector's offset, calibrated for these weights
                detector_conf["offset"] = parse_offset("shipped", c["model"], c["weights"])
            detector = KeyNetDetector(weights=c["weights"], model=c["model"], device=c["device"],
                                      num_keypoints=c["num_keypoints"],
                                      **{k: c[k] for k in self.detection_options}, **detector_conf)
        elif detector_conf or {"weights", "model", "num_keypoints", *self.detection_options} & set(own):
            raise TypeError("give detector options to the detector you pass, not to the Extractor")
        self.detector = detector
        self.orientation: Orientation = (
            make_orientation(c["orientation"], c["device"], c["multiple_orientations"])
            if isinstance(c["orientation"], str) else c["orientation"]
        )  # fmt: skip
        self.descriptor: Descriptor = (
            make_descriptor(c["descriptor"], c["device"]) if isinstance(c["descriptor"], str) else c["descriptor"]
        )

    def extract(self, image: ImageInput, return_lafs: bool = False):
        """Local features of an image (or of each image of a batch).

        Args:
            image: what ``KeyNetDetector.detect`` takes: a path, an (H, W) or (H, W, 3|4) numpy array,
                or a float tensor in [0, 1] of shape (H, W), (1, H, W) or (B, 1, H, W) (a batch).
            return_lafs: also return ``lafs`` (N, 2, 3), kornia LAFs with the orientation.

        Returns:
            For a (B, 1, H, W) tensor a list of B dicts, else one dict, of float32 CPU tensors:
            ``keypoints`` (N, 2) (x, y), ``scales`` (N,) radii, ``orientations`` (N,) degrees,
            ``scores`` (N,) by decreasing score, ``descriptors`` (N, D), ``image_size`` (2,) as (W, H).
            With ``multiple_orientations`` a keypoint repeats once per extra angle, next to its first.
        """
        if isinstance(image, (str, Path)):
            image = load_image(image)
        elif isinstance(image, np.ndarray):
            image = to_float_gray(image)
        if self.conf["resize"] and isinstance(image, np.ndarray) and max(image.shape) > self.conf["resize"]:
            results = [self._extract_resized(image)]
            single = True
        else:
            detections = self.detector.detect(image)  # checks a tensor image
            single = not isinstance(detections, list)
            if isinstance(image, torch.Tensor):
                batch = image.detach().float().cpu().reshape(-1, *image.shape[-2:]).numpy()
            else:
                batch = image[None]
            results = [self._describe(img, det) for img, det in zip(batch, [detections] if single else detections)]
        if return_lafs:
            from .lafs import features_to_lafs

            for r in results:
                r["lafs"] = features_to_lafs(r["keypoints"].numpy(), r["scales"].numpy(), r["orientations"].numpy())
        return results[0] if single else results

    def _extract_resized(self, image: np.ndarray) -> dict[str, torch.Tensor]:
        """Features of ``image`` shrunk to ``resize`` px on its longer side, in the original image's
        pixels (``to_original_pixels``); scales grow by the mean factor; ``image_size`` is the original's."""
        small, sx, sy = resize_for_extraction(image, self.conf["resize"])
        out = self._describe(small, self.detector.detect(small))
        out["keypoints"] = torch.from_numpy(to_original_pixels(out["keypoints"].numpy(), sx, sy).astype(np.float32))
        out["scales"] = out["scales"] * (0.5 * (sx + sy))
        out["image_size"] = torch.tensor([image.shape[1], image.shape[0]], dtype=torch.float32)
        return out

    def _describe(self, image: np.ndarray, det: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        kps, scales = det["keypoints"].cpu().numpy(), det["scales"].cpu().numpy()
        angles, index = self.orientation.compute(image, kps, scales)
        kps, scales = kps[index], scales[index]
        desc = self.descriptor.compute(image, kps, scales, angles)
        h, w = image.shape
        out = {
            "keypoints": torch.from_numpy(kps),
            "scales": torch.from_numpy(scales),
            "orientations": torch.from_numpy(angles),
            "scores": det["scores"].cpu()[torch.from_numpy(index)],
            "descriptors": torch.from_numpy(np.ascontiguousarray(desc, np.float32)),
            "image_size": torch.tensor([w, h], dtype=torch.float32),
        }
        return out


def resize_for_extraction(image: np.ndarray, max_size: int | None) -> tuple[np.ndarray, float, float]:
    """``image`` (H, W) shrunk (area interpolation) so that its longer side is at most ``max_size``
    (None or 0: as is), and the factors (sx, sy) from the small image's pixels to the original's."""
    import cv2

    h, w = image.shape[:2]
    if not max_size or max(h, w) <= max_size:
        return image, 1.0, 1.0
    scale = max_size / max(h, w)
    small = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    np.clip(small, 0.0, 1.0, out=small)  # area interpolation may overshoot 1 by rounding
    return small, w / small.shape[1], h / small.shape[0]


def to_original_pixels(keypoints: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """(N, 2) (x, y) keypoints of a resized image in the original's pixels, pixel centres at integers:
    pixel edges map to pixel edges, ``x = (x' + 0.5) sx - 0.5``."""
    return (np.asarray(keypoints, np.float64) + 0.5) * np.array([sx, sy]) - 0.5
