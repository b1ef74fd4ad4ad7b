"""Peak memory and keypoint agreement of banded detection on a large photo.

    python benchmarks/large_image.py [--width 4000 --height 3000] [--skip-whole]

The photo is Oxford graf img1 enlarged (bicubic) to the size asked. Each detection runs in a fresh
process; its peak memory is the rise of the peak resident set size (VmHWM) during ``detect``.
Levels larger than ``band_pixels`` run the network in overlapping row bands; the script compares
the default bands with one whole-image pass (which needs several GB at 4000x3000).
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np
import torch

from keynet import KeyNetDetector
from keynet.paths import reference_weights_path, shared_data_dir
from memory import in_fresh_process, measure_peak  # benchmarks/ is on sys.path


def detect_once(width: int, height: int, band_pixels: int) -> tuple[float, float, np.ndarray]:
    """Seconds, peak MB and (N, 3) keypoints+scales of one detection on the enlarged photo."""
    img = cv2.imread(str(shared_data_dir() / "oxford_affine/graf/img1.png"), cv2.IMREAD_GRAYSCALE)
    big = cv2.resize(img, (width, height), interpolation=cv2.INTER_CUBIC).astype(np.float32) / 255
    det = KeyNetDetector(weights=reference_weights_path(), band_pixels=band_pixels)
    t = time.perf_counter()
    out, peak_mb = measure_peak(lambda: det.detect(big))
    seconds = time.perf_counter() - t
    return seconds, peak_mb, torch.cat([out["keypoints"], out["scales"][:, None]], 1).double().numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=4000)
    parser.add_argument("--height", type=int, default=3000)
    parser.add_argument("--skip-whole", action="store_true", help="only the banded run")
    args = parser.parse_args()
    default = KeyNetDetector.default_conf["band_pixels"]
    t, peak, banded = in_fresh_process(detect_once, args.width, args.height, default)
    print(f"{args.width}x{args.height}, bands of {default} px: {t:.1f} s, peak {peak:.0f} MB, {len(banded)} keypoints")
    if args.skip_whole:
        return
    t, peak, whole = in_fresh_process(detect_once, args.width, args.height, 2**40)
    same = np.abs(whole[:, None] - banded[None]).max(-1).min(1) < 1e-3
    print(f"{args.width}x{args.height}, whole levels: {t:.1f} s, peak {peak:.0f} MB")
    print(f"banded keypoints identical to whole-level ones (position and scale within 1e-3 px): {same.mean():.1%}")


if __name__ == "__main__":
    main()
