"""``keynet pairs --out DIR``: synthetic homography pairs of a photo folder, written as an image-pair
list (``DIR/pairs.txt``) for ``keynet eval --data`` and ``keynet train --val-sequence``.

Example (a validation set from the photos that training holds out)::

    keynet pairs --out runs/val_wide --split val --preset wide --num-pairs 200 --crop 384

and one with exposure changes as well: ``keynet pairs --out runs/val_dark --preset released --darken``.
"""

from __future__ import annotations

import argparse
import sys

from .common import CLIError, check_positive, guard_outputs, output_dir

HELP = "write synthetic homography pairs of a photo folder as an image-pair list (validation sets)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from keynet.train.synthesis import HOMOGRAPHY_PRESETS

    p.add_argument("--out", required=True, help="folder for the images, homographies and pairs.txt")
    p.add_argument("--images", default="", help="folder of photos (default: <data>/train_images)")
    p.add_argument("--split", choices=["val", "train"], default="val",
                   help="the photos training holds out (val, default) or the others, by the seed's 5%% split")
    p.add_argument("--preset", choices=sorted(HOMOGRAPHY_PRESETS), default="wide",
                   help="homography ranges (default: %(default)s: zoom up to 3.5x either way, any rotation, shear 0.8)")
    p.add_argument("--num-pairs", type=int, default=200, help="(default: %(default)s)")
    p.add_argument("--crop", type=int, default=384, help="side of both views, px (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="the training seed: it also picks the held-out photos (default: %(default)s)")
    p.add_argument("--darken", action="store_true",
                   help="also lower the second view's exposure: gain 0.3-1 and gamma 1-2.2, drawn with seed + 1 "
                        "(a validation set of illumination changes)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing pairs.txt in --out")


def main(args: argparse.Namespace) -> int:
    from pathlib import Path

    from keynet.train.synthesis import (
        HOMOGRAPHY_PRESETS,
        JitterConfig,
        PairConfig,
        generate_pairs,
        lower_exposure,
        pair_images,
        photo_folder,
        write_pair_list,
    )

    check_positive(args.num_pairs, "--num-pairs")
    check_positive(args.crop, "--crop")
    image_dir = photo_folder(args.images)
    if not image_dir.is_dir():
        raise CLIError(f"--images {image_dir}: not a folder")
    out = output_dir(Path(args.out))
    guard_outputs([out / "pairs.txt"], [image_dir], args.overwrite)
    conf = PairConfig(num_pairs=args.num_pairs, crop=args.crop, homography=HOMOGRAPHY_PRESETS[args.preset],
                      jitter=JitterConfig(), seed=args.seed, split=args.split)
    try:
        images = pair_images(image_dir, conf)
        pairs = generate_pairs(images, conf)
    except (ValueError, RuntimeError) as e:
        raise CLIError(str(e)) from None
    if args.darken:
        pairs["dst"] = lower_exposure(pairs["dst"], args.seed + 1)
    listing = write_pair_list(pairs, out)
    print(f"keynet pairs: wrote {listing} ({args.num_pairs} pairs of {len(images)} photos)", file=sys.stderr)
    return 0
