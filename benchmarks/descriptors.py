"""Descriptors at the same Key.Net keypoints and orientation on Oxford Affine, by sequence group:
the matching score (Key.Net protocol, top 1,000) and MMA@3 px (D2-Net protocol, top 2,000), both as
``keynet eval`` computes them (5,000 keypoints per image before the protocols).

Groups: viewpoint (graf, wall), illumination/blur/JPEG (leuven, bikes, trees, ubc), zoom+rotation
(bark, boat). Default descriptors: OpenCV SIFT, AffNet's HardTFeat (shared data) and keynet's own
(``descriptor="keynet"``), all with the gradient orientation.

    python benchmarks/descriptors.py [--descriptor sift hardtfeat keynet] [--orientation gradient]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from keynet.eval.datasets import OXFORD_GROUPS, load_dataset
from keynet.eval.detectors import make_detector
from keynet.eval.report import MMA_THRESHOLDS
from keynet.eval.run import DETECTION_BUDGET, evaluate
from keynet.features.descriptors import make_descriptor
from keynet.features.orientation import make_orientation
from keynet.paths import shared_data_dir

def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--descriptor", nargs="+", default=["sift", "hardtfeat", "keynet"])
    p.add_argument("--orientation", default="gradient")
    p.add_argument("--detector", default="keynet")
    args = p.parse_args()
    dataset = load_dataset(shared_data_dir() / "oxford_affine", None)
    detector = make_detector(args.detector, DETECTION_BUDGET)
    mma3 = MMA_THRESHOLDS.index(3)
    rows = []
    for spec in args.descriptor:
        start = time.perf_counter()
        results = evaluate([detector], [dataset], make_descriptor(spec), progress=False,
                           orientation=make_orientation(args.orientation))
        pairs = results[detector.name][dataset.name]["pairs"]
        cells = []
        for sequences in [*OXFORD_GROUPS.values(), tuple(s for g in OXFORD_GROUPS.values() for s in g)]:
            chosen = [r for r in pairs if r["sequence"] in sequences]
            cells.append((100 * np.mean([r["matching_score"] for r in chosen]), 100 * np.mean([r["mma"][mma3] for r in chosen])))
        rows.append((spec, cells, time.perf_counter() - start))
        print(spec, [f"{a:.1f}/{b:.1f}" for a, b in cells], f"{rows[-1][2]:.0f} s", flush=True)
    print(f"\n{args.detector} keypoints, {args.orientation} orientation; cells: matching score % / MMA@3 %")
    print("| descriptor | " + " | ".join([*OXFORD_GROUPS, "all 40 pairs"]) + " |")
    print("|---|" + "---:|" * (len(OXFORD_GROUPS) + 1))
    for spec, cells, _ in rows:
        print(f"| {spec} | " + " | ".join(f"{a:.1f} / {b:.1f}" for a, b in cells) + " |")


if __name__ == "__main__":
    main()
