"""``keynet match``: two modes.

- ``keynet match FEATURES.h5 --pairs PAIRS --out matches.h5``: hloc's matches.h5 for the pairs (a
  pairs file, ``exhaustive`` or ``sequential:K``); resumable, an existing file gets the missing pairs.
- ``keynet match IMAGE_A IMAGE_B [--viz out.png]``: extract, match and verify two images (no files
  needed); prints the counts and draws the inlier matches.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import CLIError, add_run_options, apply_threads, guard_outputs, output_file_parent

HELP = "match features (features.h5 -> matches.h5), or two images with a picture of the inliers"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", type=Path, metavar="INPUT",
                   help="FEATURES.h5 (with --pairs and --out), or two image files")
    p.add_argument("--pairs", default=None,
                   help="features mode: a pairs file ('name0 name1' per line), exhaustive or sequential:K")
    p.add_argument("--out", type=Path, default=None, help="features mode: the matches.h5 to write or complete")
    p.add_argument("--matcher", choices=["mnn", "snn", "smnn"], default="smnn",
                   help="kornia's mutual nearest neighbour, ratio test, or both (default: %(default)s)")
    p.add_argument("--ratio", type=float, default=0.85, help="ratio-test threshold (default: %(default)s)")
    g = p.add_argument_group("two-image mode")
    g.add_argument("--viz", type=Path, default=None, help="write a picture of the inlier matches (PNG)")
    g.add_argument("--geometry", choices=["F", "H"], default="F",
                   help="model verified with MAGSAC++: fundamental matrix or homography (default: %(default)s)")
    g.add_argument("--threshold", type=float, default=None, help="inlier threshold, px (default: 1 for F, 3 for H)")
    g.add_argument("--num-keypoints", type=int, default=4096, help="keypoints per image (default: %(default)s)")
    g.add_argument("--descriptor", default="rootsift", help="descriptor (default: %(default)s)")
    g.add_argument("--orientation", default="upright",
                   help="upright (default), gradient or orinet: gradient for images that turn; gradient+upright for both")
    g.add_argument("--max-size", type=int, default=1600,
                   help="longer image side for extraction, px; keypoints are in original pixels (default: %(default)s)")
    add_run_options(p)


def main(args: argparse.Namespace) -> int:
    apply_threads(args)
    if len(args.inputs) == 1 and args.inputs[0].suffix.lower() in (".h5", ".hdf5"):
        return _match_file(args)
    if len(args.inputs) == 2:
        return _match_images(args)
    raise CLIError("give one FEATURES.h5 (with --pairs and --out) or two image files")


def _match_file(args: argparse.Namespace) -> int:
    from keynet.io.hloc import h5_items
    from keynet.matching.matchers import Matcher
    from keynet.pipelines.match import match_pairs
    from keynet.matching.pairs import make_pairs

    features = args.inputs[0]
    if args.out is None or args.pairs is None:
        raise CLIError("features mode needs --pairs and --out (e.g. --pairs exhaustive --out matches.h5)")
    if not features.is_file():
        raise CLIError(f"{features}: no such file")
    output_file_parent(args.out, "--out")
    guard_outputs([args.out], [features], overwrite=True)  # refuses an input; an existing file is completed
    if args.overwrite:
        args.out.unlink(missing_ok=True)
    try:
        names = h5_items(features)
        pairs = make_pairs(names, args.pairs)
        stats = match_pairs(features, pairs, args.out, Matcher(args.matcher, args.ratio), not args.quiet)
    except (ValueError, KeyError) as e:
        raise CLIError(str(e)) from None
    print(f"{stats['matched']} pairs matched ({stats['matches']} matches), {stats['skipped']} already in {args.out}")
    return 0


def _match_images(args: argparse.Namespace) -> int:

    from keynet.io.files import write_image
    from keynet.io.image import load_image
    from keynet.matching.geometry import estimate_fundamental, estimate_homography
    from keynet.matching.matchers import Matcher, matches_to_pairs
    from keynet.features import Extractor
    from keynet.viz.matches import draw_matches

    if args.pairs or args.out:
        raise CLIError("--pairs and --out belong to the features mode (FEATURES.h5 --pairs ... --out ...)")
    if args.viz is not None:
        output_file_parent(args.viz, "--viz")
        guard_outputs([args.viz], args.inputs, args.overwrite)
    try:
        extractor = Extractor(num_keypoints=args.num_keypoints, descriptor=args.descriptor,
                              orientation=args.orientation, resize=args.max_size or None)
        grays, feats = [], []
        for path in args.inputs:
            gray = load_image(path)
            grays.append(gray)
            feats.append({k: v.numpy() for k, v in extractor.extract(gray).items()})
    except (FileNotFoundError, ValueError) as e:
        raise CLIError(str(e)) from None
    matches0, _ = Matcher(args.matcher, args.ratio).match(feats[0]["descriptors"], feats[1]["descriptors"])
    m = matches_to_pairs(matches0)
    kp0, kp1 = feats[0]["keypoints"][m[:, 0]], feats[1]["keypoints"][m[:, 1]]
    threshold = args.threshold or (1.0 if args.geometry == "F" else 3.0)
    estimate = estimate_fundamental if args.geometry == "F" else estimate_homography
    geometry = estimate(kp0, kp1, threshold)
    print(f"keypoints {len(feats[0]['keypoints'])} / {len(feats[1]['keypoints'])}, matches {len(m)}, "
          f"{args.geometry} inliers {geometry.num_inliers} ({threshold:g} px, MAGSAC++)")
    if args.viz is not None:
        text = (f"{geometry.num_inliers} {args.geometry} inliers of {len(m)} {args.matcher} matches; "
                f"grey dots: outliers")
        picture = draw_matches(grays[0], grays[1], kp0, kp1, geometry.inliers, text)
        write_image(args.viz, picture)
        print(f"picture: {args.viz}", file=sys.stderr)
    return 0
