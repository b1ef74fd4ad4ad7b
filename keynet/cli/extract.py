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
    check_positive,
    add_run_options,
    apply_threads,
    collect_images,
    guard_outputs,
    output_file_parent,
    require,
)
from .detect import add_input_std_argument, add_offset_argument, input_std_option, make_detector, offset_option

HELP = "extract local features (keypoints, orientation, descriptors) of a folder into an hloc features.h5"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", type=Path, help="image folder (searched recursively); h5 names are paths relative to it")
    p.add_argument("--out", type=Path, required=True, help="the features.h5 file (created, or resumed if it exists)")
    p.add_argument("--descriptor", default="sift",
                   help="sift (default), rootsift, keynet (keynet's own HardNet, shipped), hardtfeat (AffNet's HardTFeat in the shared data), "
                        "ARCH:PATH with ARCH tfeat, hardnet, sosnet or hynet, or a weights file PATH")
    p.add_argument("--orientation", default="gradient",
                   help="gradient (default; SIFT's dominant gradient), orinet[:PATH] (AffNet's OriNet) or upright; "
                        "gradient+upright or orinet+upright: every keypoint also upright, stored as a second keypoint")
    p.add_argument("--multiple-orientations", action="store_true",
                   help="gradient: one more keypoint per secondary orientation peak (SIFT's rule)")
    add_model_options(p)
    add_input_std_argument(p, "0.2, the Extractor's")
    add_offset_argument(p)
    add_run_options(p)
    g = p.add_argument_group("beyond one process")
    g.add_argument("--shard-index", type=int, default=0,
                   help="with --num-shards: extract shard I of the sorted image list into OUT's shard file "
                        "<stem>.shard-I-of-N.h5 (for job arrays; combine them with keynet merge)")
    g.add_argument("--num-shards", type=int, default=1, help="number of shards (default: %(default)s)")
    g.add_argument("--ray", action="store_true",
                   help="extract on Ray Data (pip install 'keynet[ray]'): a local Ray, or the cluster at --ray-address")
    g.add_argument("--ray-address", default=None, help="a running Ray cluster's address (default: start a local one)")
    g.add_argument("--workers", type=int, default=2, help="with --ray: actors, each with the model loaded once "
                                                          "(default: %(default)s)")


def main(args: argparse.Namespace) -> int:
    from keynet.features import Extractor
    from keynet.pipelines.distributed import shard_of, shard_path
    from keynet.pipelines.extract import extract_to_h5

    apply_threads(args)
    if not args.folder.is_dir():
        raise CLIError(f"{args.folder}: not a folder; give the image folder")
    images, problems = collect_images([args.folder])
    if not images:
        raise CLIError(f"{args.folder}: no images found in the folder")
    for msg in problems:
        print(f"keynet extract: {msg}", file=sys.stderr)
    out = output_file_parent(args.out, "--out")
    if args.num_shards > 1 or args.shard_index:
        try:
            images = shard_of(images, args.shard_index, args.num_shards)
        except ValueError as e:
            raise CLIError(str(e)) from None
        out = shard_path(out, args.shard_index, args.num_shards)
        print(f"keynet extract: shard {args.shard_index} of {args.num_shards}: {len(images)} image(s) into {out}",
              file=sys.stderr)
    guard_outputs([out], images, overwrite=True)  # refuses an input; an existing file is resumed, not replaced
    if args.overwrite:
        out.unlink(missing_ok=True)
    # Built here also for --ray (whose actors build their own): bad options fail in one line before Ray starts.
    # The Extractor's detector options, not KeyNetDetector's paper-faithful defaults.
    options = {**input_std_option(args), **offset_option(args)}
    detection = {**Extractor.default_detection(), **options}
    detector = make_detector(args, **detection)
    try:
        extractor = Extractor(detector=detector, descriptor=args.descriptor, orientation=args.orientation,
                              multiple_orientations=args.multiple_orientations, device=args.device)
    except (FileNotFoundError, ValueError) as e:
        raise CLIError(str(e)) from None
    settings = {
        "detector": {"model": args.model, "weights": str(args.weights) if args.weights else None,
                     "num_keypoints": args.num_keypoints, **detection},
        "orientation": args.orientation,
        "multiple_orientations": args.multiple_orientations,
        "descriptor": args.descriptor,
    }
    try:
        if args.ray:
            report = _extract_on_ray(args, images, out, settings, options)
        else:
            report = extract_to_h5(images, args.folder, out, extractor, settings, progress=not args.quiet)
    except ValueError as e:  # settings differ from the file's
        raise CLIError(f"{e} (--overwrite)") from None
    for name, reason in report.failed:
        print(f"keynet extract: failed {name}: {reason}", file=sys.stderr)
    failed = len(report.failed) + len(problems)
    print(f"keynet extract: {out}: {len(report.written)} image(s) written, {len(report.skipped)} already there"
          + (f", {failed} failed" if failed else ""), file=sys.stderr)
    return 1 if failed else 0


def _extract_on_ray(args: argparse.Namespace, images: list[Path], out: Path, settings: dict, options: dict):
    require("ray", "ray", "--ray")
    from keynet.pipelines.distributed import extract_with_ray

    check_positive(args.workers, "--workers")
    conf = {"model": args.model, "weights": str(args.weights) if args.weights else None,
            "num_keypoints": args.num_keypoints, "device": args.device, "descriptor": args.descriptor,
            "orientation": args.orientation, "multiple_orientations": args.multiple_orientations, **options}
    return extract_with_ray(images, args.folder, out, conf, settings, workers=args.workers,
                            threads_per_worker=args.threads or 1, address=args.ray_address)
