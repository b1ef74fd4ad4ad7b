"""``keynet detect IMAGE_OR_DIR... --out DIR``: ``<stem>.npz`` (and with ``--viz`` ``<stem>.viz.png``) per image."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import (
    CLIError,
    add_model_options,
    add_run_options,
    apply_threads,
    check_device,
    check_positive,
    collect_images,
    guard_outputs,
    output_dir,
)

HELP = "detect keypoints in images and write one .npz per image"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", type=Path, help="image files and/or folders (searched recursively)")
    p.add_argument("--out", type=Path, required=True, help="output folder (created if missing)")
    add_model_options(p)
    p.add_argument("--compat", choices=["kornia"], default=None, help="kornia's level-to-image mapping")
    p.add_argument("--precision", choices=["float32", "bfloat16"], default=None,
                   help="of the learned convolutions; bfloat16 is faster on CPUs with AVX512-BF16 or AMX "
                        "and moves some keypoints (default: float32)")
    p.add_argument("--fast", action="store_true",
                   help="--precision bfloat16 where the CPU runs it natively (AVX512-BF16 or AMX): faster, "
                        "about 99%% of the keypoints unchanged; elsewhere float32")
    p.add_argument("--up-levels", type=int, choices=[0, 1, 2], default=None,
                   help="pyramid levels upsampled above full resolution (default 1); 0 is about 2x faster "
                        "and drops the keypoints below scale 22, which changes repeatability; 2 adds a level "
                        "at twice the resolution, about 2x slower, with finer keypoints (docs/evaluation.md)")
    p.add_argument("--subpixel", action="store_true",
                   help="refine positions to the response's parabola vertex (keynet extract's default; "
                        "not in the paper)")
    p.add_argument("--level-gamma", type=float, default=0.0, metavar="G",
                   help="rank keypoints by score times level downsampling factor ** G; keynet extract uses 1, "
                        "more repeatable under zoom (default: %(default)s, the paper's raw scores)")
    add_input_std_argument(p, "0, off")
    add_offset_argument(p)
    p.add_argument("--viz", action="store_true",
                   help="also write <stem>.viz.png: the strongest keypoints as circles of their radius")
    p.add_argument("--viz-keypoints", type=int, default=200,
                   help="keypoints drawn by --viz, the strongest first; 0 draws all (default: %(default)s)")
    add_run_options(p)


def add_input_std_argument(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--input-std", type=float, default=None, metavar="S",
                   help="scale each image to a gray-value standard deviation of S before detection, so that the "
                        f"keypoints do not depend on the exposure; 0: off, the paper's (default: {default})")


def input_std_option(args: argparse.Namespace) -> dict:
    """``KeyNetDetector``'s ``input_std`` of ``--input-std`` (none without it); a bad value is a ``CLIError``."""
    if args.input_std is None:
        return {}
    from keynet.detector import checked_input_std

    try:
        return {"input_std": checked_input_std(args.input_std, "--input-std")}
    except ValueError as e:
        raise CLIError(str(e)) from None


def add_offset_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--offset", default=None, metavar="DX:DY|shipped",
                   help="move every keypoint by (DX, DY) level pixels; 'shipped' cancels the shipped weights' "
                        "measured position bias, which helps where views turn against each other "
                        "(docs/training.md; default: none, the network's positions)")


def offset_option(args: argparse.Namespace) -> dict:
    """``KeyNetDetector``'s ``offset`` of ``--offset`` (none without it); a bad value is a ``CLIError``."""
    if args.offset is None:
        return {}
    from keynet.weights import parse_offset

    try:
        return {"offset": parse_offset(args.offset, args.model, args.weights)}
    except ValueError as e:
        raise CLIError(f"--offset: {e}") from None


def detector_speed_options(args: argparse.Namespace) -> dict:
    """``KeyNetDetector`` options of ``--fast``, ``--precision`` (an explicit precision wins) and
    ``--up-levels``."""
    from keynet.inference import native_bfloat16

    options = {} if args.up_levels is None else {"up_levels": args.up_levels}
    if args.precision is not None:
        options["precision"] = args.precision
    elif args.fast and native_bfloat16():
        options["precision"] = "bfloat16"
    elif args.fast:
        print("keynet: --fast: this CPU has no native bfloat16, so detection runs in float32", file=sys.stderr)
    return options


def make_detector(args: argparse.Namespace, **options):
    """The ``KeyNetDetector`` of the shared model options; unreadable weights are a ``CLIError``."""
    from keynet.detector import KeyNetDetector

    check_positive(args.num_keypoints, "--num-keypoints")
    try:
        return KeyNetDetector(weights=args.weights, model=args.model, device=check_device(args.device),
                              num_keypoints=args.num_keypoints, **options)
    except (FileNotFoundError, ValueError) as e:
        raise CLIError(str(e)) from None


def main(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm import tqdm

    from keynet.io.files import write_atomic, write_image
    from keynet.io.image import load_image
    from keynet.viz import draw_keypoints

    apply_threads(args)
    images, problems = collect_images(args.inputs)
    if not images:
        raise CLIError(problems[0] if len(problems) == 1 else "no images found in the inputs")
    for msg in problems:
        print(f"keynet detect: {msg}", file=sys.stderr)
    # Outputs are named by stem: a later image whose stem is taken is skipped, not overwritten.
    stems: dict[str, Path] = {}
    unique = []
    for path in images:
        if path.stem in stems:
            problems.append(f"{path}: skipped, {stems[path.stem]} already writes {path.stem}.npz")
            print(f"keynet detect: {problems[-1]}", file=sys.stderr)
            continue
        stems[path.stem] = path
        unique.append(path)
    images = unique
    detector = make_detector(args, compat=args.compat, subpixel=args.subpixel, level_gamma=args.level_gamma,
                             **input_std_option(args), **offset_option(args), **detector_speed_options(args))
    label = f"{'Tiny-Key.Net' if args.model == 'tiny' else 'Key.Net'} ({args.weights or 'shipped weights'})"
    out = output_dir(args.out)
    targets = {path: (out / f"{path.stem}.npz", out / f"{path.stem}.viz.png") for path in images}
    guard_outputs([t for pair in targets.values() for t in pair[: 1 + args.viz]], images, args.overwrite)
    failed = len(problems)
    for path in tqdm(images, desc="detect", unit="img", disable=args.quiet or len(images) < 2):
        try:
            gray = load_image(path)
            result = detector.detect(gray)
        except (OSError, ValueError) as e:  # ImageError is a ValueError
            tqdm.write(f"keynet detect: skipped {path}: {e}", file=sys.stderr)
            failed += 1
            continue
        arrays = {k: v.cpu().numpy().astype(np.float32) for k, v in result.items()}
        npz, png = targets[path]
        write_atomic(npz, lambda tmp: np.savez(tmp, **arrays))
        if args.viz:
            picture = draw_keypoints(gray, arrays["keypoints"], arrays["scales"], arrays["scores"],
                                     max_keypoints=args.viz_keypoints or None, label=label)
            write_image(png, picture)
    if failed:
        print(f"keynet detect: {failed} input(s) failed, {len(images) + len(problems) - failed} image(s) written",
              file=sys.stderr)
    return 1 if failed else 0
