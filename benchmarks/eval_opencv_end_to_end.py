"""OpenCV SIFT and AKAZE end to end (their own keypoints, orientations and descriptors) under both
protocols of ``keynet eval``, for comparison with Key.Net + orientation + SIFT descriptor there.

    python benchmarks/eval_opencv_end_to_end.py [--data ../shared/data/oxford_affine] [--num-keypoints 5000]

Prints matching score and MMA@3 (percent) per sequence, in the layout of ``docs/features.md``.
Binary AKAZE descriptors are unpacked to 0/1 floats, whose squared L2 distance is the Hamming
distance, so the protocols' L2 mutual nearest neighbours are Hamming ones.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import cv2
import numpy as np

from keynet.eval.datasets import load_dataset
from keynet.eval.detectors import Features, _cv_factory
from keynet.features.descriptors import RADIUS_PER_OPENCV_SIZE, to_uint8
from keynet.eval.report import MMA_THRESHOLDS
from keynet.eval.run import evaluate_pair
from keynet.io.image import load_image
from keynet.paths import shared_data_dir


def end_to_end(name: str, num_keypoints: int):
    impl = cv2.SIFT_create(nfeatures=num_keypoints) if name == "sift" else _cv_factory("AKAZE_create")()

    def run(image: np.ndarray) -> Features:
        kps, desc = impl.detectAndCompute(to_uint8(image), None)
        if name == "akaze":
            desc = np.unpackbits(desc, axis=1)
        order = np.argsort([-k.response for k in kps], kind="stable")[:num_keypoints]
        xy = np.array([kps[i].pt for i in order], np.float64)
        radius = RADIUS_PER_OPENCV_SIZE * np.array([kps[i].size for i in order], np.float64)
        score = np.array([kps[i].response for i in order], np.float64)
        return Features(xy, radius, score, desc[order].astype(np.float32))

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(shared_data_dir() / "oxford_affine"))
    parser.add_argument("--num-keypoints", type=int, default=5000)
    args = parser.parse_args()
    dataset = load_dataset(args.data)
    i3 = list(MMA_THRESHOLDS).index(3)
    for name in ("sift", "akaze"):
        extract = end_to_end(name, args.num_keypoints)
        cache: dict = {}

        def get(path):
            if path not in cache:
                image = load_image(path)
                cache[path] = (extract(image), image.shape[:2])
            return cache[path]

        per_seq = defaultdict(list)
        for pair in dataset.pairs:
            (fa, sa), (fb, sb) = get(pair.image_a), get(pair.image_b)
            rec = evaluate_pair(fa, sa, fb, sb, pair.H, 1000, 2000)
            per_seq[pair.sequence].append((rec["matching_score"], rec["mma"][i3]))
        rows = {s: np.mean(v, 0) for s, v in sorted(per_seq.items())}
        rows["mean"] = np.mean([x for v in per_seq.values() for x in v], 0)
        print(f"OpenCV {name} end to end: " + "  ".join(f"{s} {100 * ms:.1f}/{100 * mma:.1f}" for s, (ms, mma) in rows.items()))


if __name__ == "__main__":
    main()
