"""``keynet extract DIR --out features.h5``: Key.Net local features of a folder tree, in hloc's format.

The file is resumable: images it already holds are skipped (appending is the normal mode, not an
overwrite); ``--overwrite`` starts it afresh. Each finished image is flushed, so a killed run leaves a
readable file. Unreadable images are listed with the reason and make the exit code 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import (
    CLIError,
    add_model_options,
    add_run_options,
    apply_threads,
    collect_images,
    guard_outputs,
    output_file_parent,
)

HELP = "extract local features (keypoints, orientation, descriptors) of a folder into an hloc features.h5"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", type=Path, help="image folder (searched recursively); h5 names are paths relative to it")
    p.add_argument("--out", type=Path, required=True, help="the features.h5 file (created, or resumed if it exists)")
    p.add_argument("--descriptor", default="sift",
                   help="sift (default), rootsift, hardtfeat (AffNet's HardTFeat in the shared data), "
                        "ARCH:PATH with ARCH tfeat, hardnet, sosnet or hynet, or a weights file PATH")
    p.add_argument("--orientation", default="gradient",
                   help="gradient (default; SIFT's dominant gradient), orinet[:PATH] (AffNet's OriNet) or upright")
    p.add_argument("--multiple-orientations", action="store_true",
                   help="gradient: one more keypoint per secondary orientation peak (SIFT's rule)")
    add_model_options(p)
    add_run_options(p)


def main(args: argparse.Namespace) -> int:
    from keynet.features import Extractor
    from keynet.pipelines.extract import extract_to_h5

    from .detect import make_detector

    apply_threads(args)
    if not args.folder.is_dir():
        raise CLIError(f"{args.folder}: not a folder; give the image folder")
    images, problems = collect_images([args.folder])
    for msg in problems:
        print(f"keynet extract: {msg}", file=sys.stderr)
    out = output_file_parent(args.out, "--out")
    guard_outputs([out], images, overwrite=True)  # refuses an input; an existing file is resumed, not replaced
    if args.overwrite:
        out.unlink(missing_ok=True)
    detector = make_detector(args)
    try:
        extractor = Extractor(detector=detector, descriptor=args.descriptor, orientation=args.orientation,
                              multiple_orientations=args.multiple_orientations, device=args.device)
    except (FileNotFoundError, ValueError) as e:
        raise CLIError(str(e)) from None
    settings = {
        "detector": {"model": args.model, "weights": str(args.weights) if args.weights else None,
                     "num_keypoints": args.num_keypoints},
        "orientation": args.orientation,
        "multiple_orientations": args.multiple_orientations,
        "descriptor": args.descriptor,
    }
    try:
        report = extract_to_h5(images, args.folder, out, extractor, settings, progress=not args.quiet)
    except ValueError as e:  # settings differ from the file's
        raise CLIError(f"{e} (--overwrite)") from None
    for name, reason in report.failed:
        print(f"keynet extract: failed {name}: {reason}", file=sys.stderr)
    failed = len(report.failed) + len(problems)
    print(f"keynet extract: {out}: {len(report.written)} image(s) written, {len(report.skipped)} already there"
          + (f", {failed} failed" if failed else ""), file=sys.stderr)
    return 1 if failed else 0
