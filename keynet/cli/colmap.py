"""``keynet colmap FEATURES.h5 MATCHES.h5 --images DIR --database DB``: a COLMAP database from hloc
files (images and cameras, keypoints at COLMAP's +0.5 origin, matches), then COLMAP's geometric
verification, through pycolmap."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import CLIError, add_run_options, apply_threads, guard_outputs, output_file_parent, require

HELP = "write a COLMAP database from features.h5 and matches.h5 and verify the matches"


def add_camera_options(p: argparse.ArgumentParser) -> None:
    """``--camera-mode``, ``--camera-model`` and ``--intrinsics``, shared with ``keynet sfm``."""
    p.add_argument("--camera-mode", choices=["per-image", "single"], default="per-image",
                   help="one camera per image (photos from many cameras) or one for all (default: %(default)s)")
    p.add_argument("--camera-model", default="SIMPLE_RADIAL",
                   help="COLMAP camera model when the intrinsics are estimated (default: %(default)s); the "
                        "focal length starts from EXIF where present")
    p.add_argument("--intrinsics", default=None, metavar='"MODEL P1,P2,..."',
                   help='known intrinsics shared by all images, COLMAP\'s parameter order, e.g. '
                        '"PINHOLE 2759.48,2764.16,1520.69,1006.81"; kept fixed in mapping')


def camera_settings(args: argparse.Namespace) -> dict:
    """``camera_mode``, ``camera_model``, ``camera_params`` for ``keynet.io.colmap.create_database``."""
    from keynet.io.colmap import parse_intrinsics

    settings = {"camera_mode": args.camera_mode, "camera_model": args.camera_model, "camera_params": None}
    if args.intrinsics:
        try:
            settings["camera_model"], settings["camera_params"] = parse_intrinsics(args.intrinsics)
        except ValueError as e:
            raise CLIError(str(e)) from None
    return settings


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("features", type=Path, help="hloc features.h5")
    p.add_argument("matches", type=Path, help="hloc matches.h5")
    p.add_argument("--images", type=Path, required=True, help="the image folder the names are relative to")
    p.add_argument("--database", type=Path, required=True, help="the COLMAP database to write")
    p.add_argument("--pairs", default="exhaustive",
                   help="pairs to import and verify: a pairs file, exhaustive or sequential:K; pairs missing "
                        "from the matches file are left out (default: %(default)s)")
    add_camera_options(p)
    add_run_options(p)


def main(args: argparse.Namespace) -> int:
    require("pycolmap", "sfm", "keynet colmap")
    from keynet.io.colmap import build_database, verified_pairs
    from keynet.io.hloc import MatchFile, h5_items
    from keynet.matching.pairs import make_pairs

    apply_threads(args)
    for path in (args.features, args.matches):
        if not path.is_file():
            raise CLIError(f"{path}: no such file")
    if not args.images.is_dir():
        raise CLIError(f"--images {args.images}: no such folder")
    output_file_parent(args.database, "--database")
    pairs_path = args.database.with_suffix(".pairs.txt")
    guard_outputs([args.database, pairs_path], [args.features, args.matches], args.overwrite)
    cameras = camera_settings(args)
    try:
        names = h5_items(args.features)
        with MatchFile(args.matches, mode="r") as mf:
            pairs = [p for p in make_pairs(names, args.pairs) if p in mf]
        if not pairs:
            raise CLIError(f"{args.matches} holds none of the pairs asked for ({args.pairs})")
        build_database(args.database, args.images, names, args.features, args.matches, pairs, pairs_path, **cameras)
    except (ValueError, KeyError) as e:
        raise CLIError(str(e)) from None
    verified = verified_pairs(args.database)
    print(f"{len(names)} images, {len(pairs)} matched pairs, {len(verified)} verified "
          f"({sum(verified.values())} inlier matches) -> {args.database} (pairs: {pairs_path})")
    return 0
