"""Running detectors over homography datasets: features once per image and detector, then both
protocols of ``keynet.eval.protocols`` on every pair (``evaluate``).

The detection budget (``DETECTION_BUDGET`` keypoints per image) is applied by the detector, before
the Key.Net protocol's common-area filter and top-k; it is large enough not to bind for any detector
on HPatches and Oxford, so the protocol, not the budget, decides which keypoints count. Pairs where a
side keeps fewer than top-k keypoints in the common area are flagged (``below_top_k``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

DETECTION_BUDGET = 5000

if TYPE_CHECKING:
    import numpy as np

    from .datasets import Dataset
    from keynet.features.descriptors import Descriptor
    from keynet.features.orientation import Orientation

    from .detectors import Detector, Features


class FeatureCache:
    """Detections with descriptors per ``(detector name, image path)``, within one run; each keypoint
    described at the angle(s) of ``orientation`` (upright when None). A keypoint with several angles
    (extra orientations, ``+upright``) gets ``(N, C, D)`` descriptors (``group_copies``)."""

    def __init__(self, descriptor: "Descriptor", orientation: "Orientation | None" = None) -> None:
        self.descriptor = descriptor
        self.orientation = orientation
        self._store: dict[tuple[str, Path], tuple["Features", tuple[int, int]]] = {}

    def get(self, detector: "Detector", path: Path) -> tuple["Features", tuple[int, int]]:
        """Features of the image at ``path`` and its ``(height, width)``."""
        key = (detector.name, Path(path))
        if key not in self._store:
            from keynet.io.image import load_image

            image = load_image(path)
            feats = detector.detect(image)
            if self.orientation is None:
                feats.descriptors = self.descriptor.compute(image, feats.keypoints, feats.scales, None)
            else:
                angles, index = self.orientation.compute(image, feats.keypoints, feats.scales)
                desc = self.descriptor.compute(image, feats.keypoints[index], feats.scales[index], angles)
                feats.descriptors = group_copies(desc, index, len(feats))
            self._store[key] = (feats, image.shape[:2])
        return self._store[key]

    def drop(self, detector_name: str) -> None:
        """Forget a detector's features (once all its pairs are done)."""
        for key in [k for k in self._store if k[0] == detector_name]:
            del self._store[key]


def group_copies(desc: "np.ndarray", index: "np.ndarray", n: int) -> "np.ndarray":
    """``(M, D)`` descriptors of keypoint copies (``index`` ``(M,)`` their keypoints, each of the ``n``
    at least once) as ``(n, D)`` when each keypoint has one, else ``(n, C, D)``, NaN where a keypoint
    has fewer than ``C`` copies; ``protocols.mutual_nearest_neighbours`` takes both."""
    import numpy as np

    if len(index) == n and np.array_equal(index, np.arange(n)):
        return desc
    counts = np.bincount(index, minlength=n)
    if counts.min(initial=1) < 1:
        raise ValueError("every keypoint needs at least one orientation")
    order = np.argsort(index, kind="stable")
    start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    slot = np.arange(len(index)) - start[index[order]]
    out = np.full((n, int(counts.max(initial=1)), desc.shape[1]), np.nan, np.float32)
    out[index[order], slot] = desc[order]
    return out


def evaluate_pair(
    fa: "Features",
    shape_a: tuple[int, int],
    fb: "Features",
    shape_b: tuple[int, int],
    H: "np.ndarray",
    top_k: int,
    mma_top_k: int,
) -> dict[str, Any]:
    """Both protocols on one pair: described detections of *a* and *b* (sorted best first), their
    ``(height, width)`` and the 3x3 homography from *a* to *b*. Returns the per-pair record."""
    import numpy as np

    from . import protocols as P
    from .report import MMA_THRESHOLDS

    rep = P.keynet_repeatability(
        fa.keypoints, fa.scales, fa.scores, fb.keypoints, fb.scales, fb.scores, H, shape_a, shape_b, top_k
    )
    ms = P.keynet_matching_score(
        fa.descriptors[rep["idx_a"]], fb.descriptors[rep["idx_b"]], fa.keypoints[rep["idx_a"]], rep["kps_b_in_a"]
    )
    # Features are sorted by score, so the D2-Net top-k is a prefix.
    ta, tb = fa.subset(np.arange(min(len(fa), mma_top_k))), fb.subset(np.arange(min(len(fb), mma_top_k)))
    d2 = P.d2net_pair_metrics(
        ta.keypoints, ta.descriptors, tb.keypoints, tb.descriptors, H, shape_a, np.array(MMA_THRESHOLDS)
    )
    return {
        "rep_L": rep["rep_L"],
        "rep_SL": rep["rep_SL"],
        "matching_score": ms,
        "num_a": rep["num_a"],
        "num_b": rep["num_b"],
        # fewer than top_k kept in the common area: the min(#a, #b) denominator shrinks for this pair
        "below_top_k": min(rep["num_a"], rep["num_b"]) < top_k,
        "num_keypoints": 0.5 * (rep["num_a"] + rep["num_b"]),
        "num_detected": 0.5 * (len(fa) + len(fb)),
        "mma": d2["mma"].tolist(),
        "num_matches": d2["num_matches"],
        "corner_error": d2["corner_error"],
    }


def evaluate(
    detectors: list["Detector"],
    datasets: list["Dataset"],
    descriptor: "Descriptor",
    top_k: int = 1000,
    mma_top_k: int = 2000,
    progress: bool = True,
    orientation: "Orientation | None" = None,
) -> dict[str, dict[str, dict[str, Any]]]:
    """``results[detector name][dataset name] = {"mean": ..., "pairs": [...]}`` (see ``report``);
    keypoints are described at ``orientation``'s angle (upright when None)."""
    from .report import summarize

    def one_pair(det: "Detector", ds: "Dataset", pair: Any) -> dict[str, Any]:
        fa, sa = cache.get(det, pair.image_a)
        fb, sb = cache.get(det, pair.image_b)
        return {"pair": pair.name, "sequence": pair.sequence,
                **evaluate_pair(fa, sa, fb, sb, pair.H, top_k, mma_top_k)}

    cache = FeatureCache(descriptor, orientation)
    return _run_pairs(detectors, datasets, cache, one_pair, summarize, "eval", progress)


def evaluate_pose(detectors: list["Detector"], datasets: list, cache: FeatureCache, matcher,
                  progress: bool = True) -> dict[str, dict[str, dict[str, Any]]]:
    """Relative-pose results ``[detector name][dataset name] = {"mean": ..., "pairs": [...]}`` of
    ``keynet.eval.pose`` datasets: every detector's features (``cache``) matched by ``matcher``."""
    from .pose import evaluate_pose_pair, summarize_pose

    def one_pair(det: "Detector", ds: Any, pair: Any) -> dict[str, Any]:
        fa, _ = cache.get(det, ds.image_dir / pair.name0)
        fb, _ = cache.get(det, ds.image_dir / pair.name1)
        return evaluate_pose_pair(fa, fb, pair, matcher)

    return _run_pairs(detectors, datasets, cache, one_pair, summarize_pose, "pose", progress)


def _run_pairs(detectors: list["Detector"], datasets: list, cache: FeatureCache,
               one_pair: Callable[["Detector", Any, Any], dict[str, Any]],
               summarize: Callable[[list[dict[str, Any]]], dict[str, Any]], desc: str,
               progress: bool) -> dict[str, dict[str, dict[str, Any]]]:
    """``results[detector name][dataset name] = {"mean": summarize(records), "pairs": records}``, with
    ``one_pair(detector, dataset, pair)`` giving each pair's record; one detector at a time, whose
    features ``cache`` forgets once its pairs are done."""
    from tqdm import tqdm

    results: dict[str, dict[str, dict[str, Any]]] = {}
    total = len(detectors) * sum(len(d.pairs) for d in datasets)
    with tqdm(total=total, desc=desc, unit="pair", disable=not progress, file=sys.stderr) as bar:
        for det in detectors:
            results[det.name] = {}
            for ds in datasets:
                bar.set_postfix_str(f"{det.name} {ds.name}", refresh=False)
                records = []
                for pair in ds.pairs:
                    records.append(one_pair(det, ds, pair))
                    bar.update(1)
                results[det.name][ds.name] = {"mean": summarize(records), "pairs": records}
            cache.drop(det.name)
    return results
