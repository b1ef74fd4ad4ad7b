"""``keynet detect IMAGE_OR_DIR... --out DIR``: one ``<stem>.npz`` (and optionally a PNG) per image."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from .io.files import write_atomic

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pbm", ".bmp", ".tif", ".tiff", ".webp"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", type=Path, help="image files and/or folders (searched recursively)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--weights", type=Path, default=None, help="weights file (default: the shipped weights)")
    p.add_argument("--model", choices=["keynet", "tiny"], default="keynet")
    p.add_argument("--num-keypoints", type=int, default=2048)
    p.add_argument("--compat", choices=["kornia"], default=None, help="kornia's level-to-image mapping")
    p.add_argument("--precision", choices=["float32", "bfloat16"], default=None,
                   help="of the learned convolutions; bfloat16 is faster on CPUs with AVX512-BF16 or AMX "
                        "and moves some keypoints (default: float32)")
    p.add_argument("--fast", action="store_true",
                   help="--precision bfloat16 where the CPU runs it natively (AVX512-BF16 or AMX): faster, "
                        "about 99%% of the keypoints unchanged; elsewhere float32")
    p.add_argument("--up-levels", type=int, choices=[0, 1], default=None,
                   help="pyramid levels upsampled above full resolution (default 1); 0 is about 2x faster "
                        "and drops the keypoints below scale 22, which changes repeatability")
    p.add_argument("--viz", action="store_true", help="also write <stem>.png with the keypoints drawn")
    p.add_argument("--device", default="cpu")


def detector_speed_options(args: argparse.Namespace) -> dict:
    """``KeyNetDetector`` options of ``--fast``, ``--precision`` (an explicit precision wins) and
    ``--up-levels``."""
    from .inference import native_bfloat16

    options = {} if args.up_levels is None else {"up_levels": args.up_levels}
    if args.precision is not None:
        options["precision"] = args.precision
    elif args.fast and native_bfloat16():
        options["precision"] = "bfloat16"
    elif args.fast:
        print("keynet: --fast: this CPU has no native bfloat16, so detection runs in float32", file=sys.stderr)
    return options


def collect_images(inputs: list[Path]) -> tuple[list[Path], list[str]]:
    """Image files named or found (recursively, sorted) under folders; and the problems found."""
    images, problems = [], []
    for item in inputs:
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                problems.append(f"{item}: no images found in folder")
            images.extend(found)
        elif item.exists():
            images.append(item)
        else:
            problems.append(f"{item}: no such file or folder")
    return images, problems


def main(args: argparse.Namespace) -> int:
    from .detector import KeyNetDetector
    from .io.image import load_image
    from .viz import draw_keypoints

    images, problems = collect_images(args.inputs)
    for msg in problems:
        print(f"keynet: {msg}", file=sys.stderr)
    # Outputs are named by stem: a later image whose stem is taken is skipped, not overwritten.
    stems: dict[str, Path] = {}
    unique = []
    for path in dict.fromkeys(images):
        if path.stem in stems:
            problems.append(f"{path}: skipped, {stems[path.stem]} already writes {path.stem}.npz")
            print(f"keynet: {problems[-1]}", file=sys.stderr)
            continue
        stems[path.stem] = path
        unique.append(path)
    images = unique
    try:
        detector = KeyNetDetector(
            weights=args.weights, model=args.model, device=args.device,
            num_keypoints=args.num_keypoints, compat=args.compat, **detector_speed_options(args),
        )
    except (FileNotFoundError, ValueError) as e:
        print(f"keynet: {e}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    failed = len(problems)
    for path in tqdm(images, desc="detect", unit="img", disable=len(images) < 2):
        try:
            gray = load_image(path)
            out = detector.detect(gray)
        except (OSError, ValueError) as e:  # ImageError is a ValueError
            tqdm.write(f"keynet: skipped {path}: {e}", file=sys.stderr)
            failed += 1
            continue
        arrays = {k: v.cpu().numpy().astype(np.float32) for k, v in out.items()}
        write_atomic(args.out / f"{path.stem}.npz", lambda tmp: np.savez(tmp, **arrays))
        if args.viz:
            picture = draw_keypoints(gray, arrays["keypoints"], arrays["scales"])
            write_atomic(args.out / f"{path.stem}.png", lambda tmp: cv2.imwrite(str(tmp), picture))
    if failed:
        print(f"keynet: {failed} input(s) failed, {len(images) + len(problems) - failed} image(s) written", file=sys.stderr)
    return 1 if failed else 0
