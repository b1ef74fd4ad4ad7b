"""``keynet sfm IMAGES --out DIR``: extract, match, COLMAP database, verification and pycolmap's
incremental mapping; writes the model and prints its statistics (``keynet.pipelines.sfm``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .colmap import add_camera_options, camera_settings
from .common import CLIError, add_run_options, apply_threads, check_positive, guard_outputs, output_dir, require

HELP = "structure from motion on a folder of photos: features, matches, COLMAP database and model"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from keynet.pipelines.sfm import default_conf as d

    p.add_argument("images", type=Path, help="folder of photos (searched recursively)")
    p.add_argument("--out", type=Path, required=True,
                   help="output folder: features.h5 and matches.h5 (resumed), pairs.txt, database.db, models/, "
                        "model/ (the largest model, binary), model.png")
    p.add_argument("--max-size", type=int, default=d["max_size"],
                   help="longer side for extraction, px; keypoints are mapped back to the original pixels; "
                        "0 keeps the original size (default: %(default)s)")
    p.add_argument("--num-keypoints", type=int, default=d["num_keypoints"], help="per image (default: %(default)s)")
    p.add_argument("--descriptor", default=d["descriptor"], help="descriptor (default: %(default)s)")
    p.add_argument("--orientation", default=d["orientation"],
                   help="upright (default: photos of a collection are mostly upright), gradient, orinet, or gradient+upright")
    p.add_argument("--matcher", choices=["mnn", "snn", "smnn"], default=d["matcher"],
                   help="kornia matcher (default: %(default)s)")
    p.add_argument("--ratio", type=float, default=d["ratio"], help="ratio-test threshold (default: %(default)s)")
    p.add_argument("--pairs", default=d["pairs"],
                   help="exhaustive, sequential:K (each image with the next K by name) or a pairs file "
                        "(default: %(default)s)")
    add_camera_options(p)
    p.add_argument("--seed", type=int, default=d["seed"],
                   help="seed of COLMAP's verification and mapper (default: %(default)s); a mapper run whose "
                        f"largest model holds under half the photos is repeated with the next seed, "
                        f"{d['mapper_tries']} runs at most")
    p.add_argument("--text", action="store_true", help="also write the model as text (model_txt/)")
    add_run_options(p, threads=None)


def main(args: argparse.Namespace) -> int:
    require("pycolmap", "sfm", "keynet sfm")
    from keynet.pipelines.sfm import run_sfm

    from .common import collect_images

    apply_threads(args)
    check_positive(args.num_keypoints, "--num-keypoints")
    if not args.images.is_dir():
        raise CLIError(f"{args.images}: not a folder of photos")
    images, problems = collect_images([args.images])
    if problems:
        raise CLIError(problems[0])
    names = [p.relative_to(args.images).as_posix() for p in images]
    if len(names) < 2:
        raise CLIError(f"{args.images}: structure from motion needs at least 2 photos, found {len(names)}")
    out = output_dir(args.out)
    # features.h5 and matches.h5 are resumed (their settings are checked); the rest is replaced.
    guard_outputs([out / "database.db", out / "model"], images, args.overwrite)
    conf = {"max_size": args.max_size, "num_keypoints": args.num_keypoints, "descriptor": args.descriptor,
            "orientation": args.orientation,
            "matcher": args.matcher, "ratio": args.ratio, "pairs": args.pairs, "threads": args.threads,
            "seed": args.seed,
            **camera_settings(args)}
    try:
        model, stats = run_sfm(args.images, names, out, conf, write_text=args.text, progress=not args.quiet)
    except (ValueError, KeyError) as e:
        raise CLIError(str(e)) from None
    if model is None:
        print(f"no model: COLMAP could not register an initial pair among {len(names)} images")
        return 1
    print(f"registered {stats['registered']}/{len(names)} images, {stats['points']} 3D points, "
          f"mean track length {stats['track_length']:.2f}, mean reprojection error {stats['reprojection_error']:.2f} px")
    print(f"model: {out / 'model'}  picture: {out / 'model.png'}")
    return 0
