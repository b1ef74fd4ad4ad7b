"""Time and peak memory of detection on a large photo.

    python benchmarks/large_image.py [--width 4000 --height 3000]

The photo is Oxford graf img1 enlarged (bicubic) to the size asked. The detection runs in a fresh
process; its peak memory is the rise of the peak resident set size (VmHWM) during ``detect``.
Key.Net's network always works in row bands of at most 2^18 px, and the non-maxima suppression of
levels larger than ``band_pixels`` in bands too; both are exact (``tests/test_inference.py`` and
``tests/test_detector.py`` compare banded with whole-image results), so memory is bounded without
changing the keypoints.
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np

from keynet import KeyNetDetector
from keynet.paths import reference_weights_path, shared_data_dir
from memory import in_fresh_process, measure_peak  # benchmarks/ is on sys.path


def detect_once(width: int, height: int) -> tuple[float, float, int]:
    """Seconds, peak MB and number of keypoints of one detection on the enlarged photo."""
    img = cv2.imread(str(shared_data_dir() / "oxford_affine/graf/img1.png"), cv2.IMREAD_GRAYSCALE)
    big = cv2.resize(img, (width, height), interpolation=cv2.INTER_CUBIC).astype(np.float32) / 255
    det = KeyNetDetector(weights=reference_weights_path())
    t = time.perf_counter()
    out, peak_mb = measure_peak(lambda: det.detect(big))
    return time.perf_counter() - t, peak_mb, len(out["keypoints"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=4000)
    parser.add_argument("--height", type=int, default=3000)
    args = parser.parse_args()
    t, peak, n = in_fresh_process(detect_once, args.width, args.height)
    print(f"{args.width}x{args.height}: {t:.1f} s, peak {peak:.0f} MB above the process's resident size, {n} keypoints")


if __name__ == "__main__":
    main()
