"""Ground-truth epipolar error of Key.Net matches on the Strecha fountain's 15 pairs (known cameras),
with the Extractor's detection options, without its contrast normalisation (``input_std=0``), and
with the calibrated offset of the shipped weights (``keynet.weights.SHIPPED_OFFSETS``).

Upright Key.Net + RootSIFT features as ``benchmarks/pose.py`` makes them, kornia's mutual nearest
neighbours with the ratio test (0.85), and each match's Sampson distance to the ground-truth
epipolar geometry (kornia), in pixels of the original photos. Matches are split by the pyramid
levels of their two keypoints: the same level (radii within 2^0.25 of each other) or different
ones, where a position bias that is constant in level pixels would differ between the views.

    python benchmarks/epipolar.py [--max-size 1600] [--num-keypoints 8192]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from kornia.geometry.epipolar import cross_product_matrix, fundamental_from_essential, sampson_epipolar_distance

from keynet.eval.pose import strecha_pairs
from keynet.features import Extractor
from keynet.features.extractor import resize_for_extraction, to_original_pixels
from keynet.io.image import load_image
from keynet.matching.matchers import Matcher, matches_to_pairs
from keynet.paths import shared_data_dir


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--max-size", type=int, default=1600)
    p.add_argument("--num-keypoints", type=int, default=8192)
    args = p.parse_args()
    root = shared_data_dir() / "multiview" / "strecha_fountain_p11"
    names = [f"000{i}.jpg" for i in range(6)]
    pairs = strecha_pairs(root / "gt_dense_cameras", names)
    images = {n: load_image(root / "images" / n) for n in names}
    matcher = Matcher("smnn", 0.85)
    print("| detection | levels | matches | < 0.5 px | < 1 px | median (px) |\n|---|---|---:|---:|---:|---:|")
    variants = {"Extractor's": {}, "input_std=0": {"input_std": 0.0}, "offset=shipped": {"offset": "shipped"}}
    for variant, options in variants.items():
        extractor = Extractor(descriptor="rootsift", orientation="upright", num_keypoints=args.num_keypoints,
                              **options)
        feats = {}
        for n, image in images.items():
            small, sx, sy = resize_for_extraction(image, args.max_size)
            f = {k: v.numpy() for k, v in extractor.extract(small).items()}
            feats[n] = to_original_pixels(f["keypoints"], sx, sy), f["descriptors"], f["scales"]
        errors = {"same": [], "different": []}
        for pair in pairs:
            (k0, d0, s0), (k1, d1, s1) = feats[pair.name0], feats[pair.name1]
            m = matches_to_pairs(matcher.match(d0, d1)[0])
            E = cross_product_matrix(torch.from_numpy(pair.t.reshape(1, 3))) @ torch.from_numpy(pair.R)[None]
            F = fundamental_from_essential(E, torch.from_numpy(pair.K0)[None], torch.from_numpy(pair.K1)[None])
            d = sampson_epipolar_distance(torch.from_numpy(k0[m[:, 0]]).double()[None],
                                          torch.from_numpy(k1[m[:, 1]]).double()[None], F, squared=False)[0].numpy()
            same = np.abs(np.log2(s1[m[:, 1]] / s0[m[:, 0]])) < 0.25
            errors["same"].append(d[same])
            errors["different"].append(d[~same])
        for levels, parts in errors.items():
            e = np.concatenate(parts)
            print(f"| {variant} | {levels} | {len(e)} | {100 * (e < 0.5).mean():.1f} | {100 * (e < 1).mean():.1f} | "
                  f"{np.median(e):.3f} |", flush=True)


if __name__ == "__main__":
    main()
