"""``keynet eval``: run detectors over homography datasets and write results.json, report.md, plots.

Example::

    keynet eval --data ../shared/data/oxford_affine --data ../shared/data/hpatches/v_dogman \\
        --detector sift --detector orb --detector keynet-ref --out runs/eval

Each image is detected (and described) once per detector; every pair then gets both protocols of
``keynet.eval.protocols`` (``keynet.eval.run``).
"""

from __future__ import annotations

import argparse
import shlex
import time
from pathlib import Path
from typing import Iterable

from keynet.eval.run import DETECTION_BUDGET

from .common import CLIError, add_run_options, apply_threads, check_positive, guard_outputs, output_dir, require

HELP = "evaluate detectors on HPatches / Oxford with Key.Net's and D2-Net's protocols"


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
    parser.add_argument("--out", required=True, type=Path,
                        help="output folder (created): results.json, report.md and plots")
    parser.add_argument(
        "--descriptor", default="sift",
        help="descriptor for the matching metrics, the same for every detector: sift (default, "
        "OpenCV SIFT), rootsift, keynet (keynet's own HardNet, shipped), hardtfeat (AffNet's HardTFeat weights in the shared data), "
        "ARCH:PATH with ARCH tfeat, hardnet, sosnet or hynet, or a weights file",
    )  # fmt: skip
    parser.add_argument(
        "--orientation", default="upright",
        help="angle each keypoint is described at, the same estimate for every detector: upright "
        "(default), gradient (SIFT's dominant gradient) or orinet[:PATH] (AffNet's OriNet); a +upright suffix "
        "describes every keypoint upright as well, matched by its closest pair of descriptors",
    )  # fmt: skip
    parser.add_argument("--num-keypoints", type=int, default=DETECTION_BUDGET,
                        help="detection budget per image, applied before the protocols' common-area filter and "
                             "top-k; large enough not to bind for any detector (default %(default)s)")
    parser.add_argument("--top-k", type=int, default=1000, help="Key.Net protocol: keypoints per image (default 1000)")
    parser.add_argument("--mma-top-k", type=int, default=2000, help="D2-Net protocol: keypoints per image (default 2000)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    add_run_options(parser, threads=1)


def _parse_data(spec: str) -> tuple[str, str | None]:
    path, sep, split = spec.rpartition("@")
    return (path, split) if sep and not Path(spec).exists() else (spec, None)


def main(args: argparse.Namespace) -> int:
    """Run ``keynet eval``; returns the exit code."""
    import sys

    from keynet.eval import protocols as P
    from keynet.eval.datasets import load_dataset
    from keynet.eval.detectors import make_detector
    from keynet.features.descriptors import RADIUS_PER_OPENCV_SIZE, make_descriptor
    from keynet.features.orientation import make_orientation
    from keynet.eval.report import markdown_report, plot_names, write_json, write_plots
    from keynet.eval.pose import POSE_MATCHER, POSE_RANSAC_PX, load_pose_dataset
    from keynet.eval.run import FeatureCache, evaluate, evaluate_pose
    from keynet.io.files import write_atomic
    from keynet.matching.matchers import Matcher

    apply_threads(args)
    if not args.no_plots:
        require("matplotlib", "eval", "keynet eval's plots (or pass --no-plots)")
    for option in ("num_keypoints", "top_k", "mma_top_k"):
        check_positive(getattr(args, option), "--" + option.replace("_", "-"))
    t0 = time.perf_counter()
    try:
        datasets, pose_sets = [], []
        for path, split in map(_parse_data, args.data):
            pose = load_pose_dataset(path) if split is None else None
            (pose_sets.append(pose) if pose is not None else datasets.append(load_dataset(path, split)))
        detectors = [make_detector(s, args.num_keypoints) for s in args.detector]
        descriptor = make_descriptor(args.descriptor)
        orientation = make_orientation(args.orientation)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        raise CLIError(str(e)) from None
    names = [d.name for d in datasets]
    for i, ds in enumerate(datasets):  # same folder name twice: keep the results apart
        if names.count(ds.name) > 1:
            ds.name = f"{ds.name}#{i + 1}"
        if ds.missing:
            print(f"keynet eval: {ds.name}: {len(ds.missing)} sequences of the split are absent", file=sys.stderr)
        if not ds.pairs:
            raise CLIError(f"{ds.name}: no image pairs")
    for ds in pose_sets:
        if not ds.pairs:
            raise CLIError(f"{ds.name}: no image pairs with poses")
    out = output_dir(args.out)
    written = ["results.json", "report.md"] + ([] if args.no_plots else [n for ds in datasets for n in plot_names(ds.name)])
    inputs = [p for ds in datasets for pair in ds.pairs for p in (pair.image_a, pair.image_b)]
    inputs += [ds.image_dir / n for ds in pose_sets for pair in ds.pairs for n in (pair.name0, pair.name1)]
    guard_outputs([out / name for name in written], inputs, args.overwrite)

    results = evaluate(detectors, datasets, descriptor, args.top_k, args.mma_top_k, progress=not args.quiet,
                       orientation=orientation) if datasets else {}
    pose_results = evaluate_pose(detectors, pose_sets, FeatureCache(descriptor, orientation), Matcher(*POSE_MATCHER),
                                 progress=not args.quiet) if pose_sets else {}
    config = {
        "command": "keynet eval " + " ".join(shlex.quote(a) for a in _argv_of(args)),
        "datasets": {ds.name: {"layout": ds.layout, "pairs": len(ds.pairs), "missing": ds.missing} for ds in datasets},
        "pose_datasets": {ds.name: {"pairs": len(ds.pairs)} for ds in pose_sets},
        "pose": {"matcher": POSE_MATCHER, "ransac_px": POSE_RANSAC_PX},
        "detectors": [d.name for d in detectors],
        "descriptor": args.descriptor,
        "orientation": args.orientation,
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
    write_json(out / "results.json", config, results, pose_results)
    plots = [] if args.no_plots or not results else write_plots(out, results)
    write_atomic(out / "report.md", lambda tmp: tmp.write_text(markdown_report(config, results, plots, pose_results)))
    print(f"keynet eval: wrote {out}/results.json, report.md ({time.perf_counter() - t0:.0f} s)")
    return 0


def _argv_of(args: argparse.Namespace) -> Iterable[str]:
    """The options as they would be typed, for the report (defaults included)."""
    for d in args.data:
        yield from ("--data", d)
    for d in args.detector:
        yield from ("--detector", d)
    yield from ("--out", str(args.out), "--descriptor", args.descriptor, "--orientation", args.orientation)
    yield from ("--num-keypoints", str(args.num_keypoints), "--top-k", str(args.top_k))
    yield from ("--mma-top-k", str(args.mma_top_k), "--threads", str(args.threads))

