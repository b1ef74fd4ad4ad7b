"""``keynet eval``: run detectors over homography datasets and write results.json, report.md, plots.

Example::

    keynet eval --data /work/shared/data/oxford_affine --data /work/shared/data/hpatches/v_dogman \\
        --detector sift --detector orb --detector keynet-ref --out runs/eval

Each image is detected (and described) once per detector; every pair then gets both protocols of
``keynet.eval.protocols``. Heavy modules are imported inside functions so that building the
``keynet`` parser stays fast.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:
    import numpy as np

    from .datasets import Dataset
    from .detectors import Detector, Features, SIFTDescriptor, TFeatDescriptor


class FeatureCache:
    """Detections with descriptors per ``(detector name, image path)``, within one run."""

    def __init__(self, descriptor: "SIFTDescriptor | TFeatDescriptor") -> None:
        self.descriptor = descriptor
        self._store: dict[tuple[str, Path], tuple["Features", tuple[int, int]]] = {}

    def get(self, detector: "Detector", path: Path) -> tuple["Features", tuple[int, int]]:
        """Features of the image at ``path`` and its ``(height, width)``."""
        key = (detector.name, Path(path))
        if key not in self._store:
            from keynet.io.image import load_image

            image = load_image(path)
            feats = detector.detect(image)
            feats.descriptors = self.descriptor.compute(image, feats.keypoints, feats.scales)
            self._store[key] = (feats, image.shape[:2])
        return self._store[key]

    def drop(self, detector_name: str) -> None:
        """Forget a detector's features (once all its pairs are done)."""
        for key in [k for k in self._store if k[0] == detector_name]:
            del self._store[key]


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
        "num_keypoints": 0.5 * (rep["num_a"] + rep["num_b"]),
        "num_detected": 0.5 * (len(fa) + len(fb)),
        "mma": d2["mma"].tolist(),
        "num_matches": d2["num_matches"],
        "corner_error": d2["corner_error"],
    }


def evaluate(
    detectors: list["Detector"],
    datasets: list["Dataset"],
    descriptor: "SIFTDescriptor | TFeatDescriptor",
    top_k: int = 1000,
    mma_top_k: int = 2000,
    progress: bool = True,
) -> dict[str, dict[str, dict[str, Any]]]:
    """``results[detector name][dataset name] = {"mean": ..., "pairs": [...]}`` (see ``report``)."""
    from tqdm import tqdm

    from .report import summarize

    cache = FeatureCache(descriptor)
    results: dict[str, dict[str, dict[str, Any]]] = {}
    total = len(detectors) * sum(len(d.pairs) for d in datasets)
    with tqdm(total=total, desc="eval", unit="pair", disable=not progress, file=sys.stderr) as bar:
        for det in detectors:
            results[det.name] = {}
            for ds in datasets:
                records = []
                for pair in ds.pairs:
                    bar.set_postfix_str(f"{det.name} {pair.name}", refresh=False)
                    fa, sa = cache.get(det, pair.image_a)
                    fb, sb = cache.get(det, pair.image_b)
                    rec = {"pair": pair.name, "sequence": pair.sequence}
                    rec.update(evaluate_pair(fa, sa, fb, sb, pair.H, top_k, mma_top_k))
                    records.append(rec)
                    bar.update(1)
                results[det.name][ds.name] = {"mean": summarize(records), "pairs": records}
            cache.drop(det.name)
    return results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``keynet eval`` options."""
    parser.add_argument(
        "--data", action="append", required=True, metavar="PATH[@SPLIT]",
        help="dataset: an HPatches or Oxford sequence folder (or a folder of them), or a pairs list "
        "'image_a image_b H' per line; append @SPLIT for an HPatches split (view, illum, full, "
        "view_test, illum_test, d2net108). Repeatable.",
    )  # fmt: skip
    parser.add_argument(
        "--detector", action="append", required=True, metavar="SPEC",
        help="sift, orb, fast, gftt, harris, akaze, kaze, harris-laplace, keynet (shipped weights), "
        "keynet:PATH, keynet-ref (reference weights), kornia-keynet[:PATH]; Key.Net options after "
        "commas: model=tiny, compat=kornia, and numeric detector options such as up_levels=0. Repeatable.",
    )  # fmt: skip
    parser.add_argument("--out", required=True, type=Path, help="output folder (created)")
    parser.add_argument(
        "--descriptor", default="sift",
        help="descriptor for the matching metrics, the same for every detector: sift (default, "
        "upright OpenCV SIFT), hardtfeat (AffNet's HardTFeat weights in the shared data) or tfeat:PATH",
    )  # fmt: skip
    parser.add_argument("--num-keypoints", type=int, default=2048, help="detections kept per image (default 2048)")
    parser.add_argument("--top-k", type=int, default=1000, help="Key.Net protocol: keypoints per image (default 1000)")
    parser.add_argument("--mma-top-k", type=int, default=2000, help="D2-Net protocol: keypoints per image (default 2000)")
    parser.add_argument("--threads", type=int, default=1, help="torch and OpenCV threads (default 1)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _parse_data(spec: str) -> tuple[str, str | None]:
    path, sep, split = spec.rpartition("@")
    return (path, split) if sep and not Path(spec).exists() else (spec, None)


def main(args: argparse.Namespace) -> int:
    """Run ``keynet eval``; returns the exit code."""
    import cv2
    import torch

    from . import protocols as P
    from .datasets import load_dataset
    from .detectors import RADIUS_PER_OPENCV_SIZE, make_descriptor, make_detector
    from .report import markdown_report, write_json, write_plots

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    t0 = time.perf_counter()
    try:
        datasets = [load_dataset(*_parse_data(d)) for d in args.data]
        detectors = [make_detector(s, args.num_keypoints) for s in args.detector]
        descriptor = make_descriptor(args.descriptor)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"keynet eval: {e}", file=sys.stderr)
        return 2
    names = [d.name for d in datasets]
    for i, ds in enumerate(datasets):  # same folder name twice: keep the results apart
        if names.count(ds.name) > 1:
            ds.name = f"{ds.name}#{i + 1}"
        if ds.missing:
            print(f"keynet eval: {ds.name}: {len(ds.missing)} sequences of the split are absent", file=sys.stderr)
        if not ds.pairs:
            print(f"keynet eval: {ds.name}: no image pairs", file=sys.stderr)
            return 2

    results = evaluate(detectors, datasets, descriptor, args.top_k, args.mma_top_k, progress=not args.quiet)
    args.out.mkdir(parents=True, exist_ok=True)
    config = {
        "command": "keynet eval " + " ".join(shlex.quote(a) for a in _argv_of(args)),
        "datasets": {ds.name: {"layout": ds.layout, "pairs": len(ds.pairs), "missing": ds.missing} for ds in datasets},
        "detectors": [d.name for d in detectors],
        "descriptor": args.descriptor,
        "radius_per_opencv_size": RADIUS_PER_OPENCV_SIZE,
        "num_keypoints": args.num_keypoints,
        "top_k": args.top_k,
        "mma_top_k": args.mma_top_k,
        "keynet_protocol": {
            "border": P.BORDER, "mask_threshold": P.MASK_THRESHOLD, "radius": P.L_RADIUS,
            "overlap": P.OVERLAP_THRESHOLD, "match_px": P.MATCH_THRESHOLD,
        },
        "ransac": {"threshold": P.RANSAC_THRESHOLD, "max_iters": P.RANSAC_MAX_ITERS, "confidence": P.RANSAC_CONFIDENCE},
        "threads": args.threads,
    }  # fmt: skip
    write_json(args.out / "results.json", config, results)
    plots = [] if args.no_plots else write_plots(args.out, results)
    (args.out / "report.md").write_text(markdown_report(config, results, plots))
    print(f"keynet eval: wrote {args.out}/results.json, report.md ({time.perf_counter() - t0:.0f} s)")
    return 0


def _argv_of(args: argparse.Namespace) -> Iterable[str]:
    """The options as they would be typed, for the report (defaults included)."""
    for d in args.data:
        yield from ("--data", d)
    for d in args.detector:
        yield from ("--detector", d)
    yield from ("--out", str(args.out), "--descriptor", args.descriptor)
    yield from ("--num-keypoints", str(args.num_keypoints), "--top-k", str(args.top_k))
    yield from ("--mma-top-k", str(args.mma_top_k), "--threads", str(args.threads))


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(prog="python -m keynet.eval.cli", description=__doc__.splitlines()[0])
    add_arguments(_parser)
    sys.exit(main(_parser.parse_args()))
