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

from keynet.matching.matchers import Matcher
from pose import extract_all, fountain, keynet_fn, match_pairs  # benchmarks/pose.py


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--max-size", type=int, default=1600)
    p.add_argument("--num-keypoints", type=int, default=8192)
    args = p.parse_args()
    pairs, images = fountain()
    matcher = Matcher("smnn", 0.85)
    print("| detection | levels | matches | < 0.5 px | < 1 px | median (px) |\n|---|---|---:|---:|---:|---:|")
    variants = {"Extractor's": {}, "input_std=0": {"input_std": 0.0}, "offset=shipped": {"offset": "shipped"}}
    for variant, options in variants.items():
        feats = extract_all(keynet_fn("rootsift", args.num_keypoints, **options), images, args.max_size)
        errors = {"same": [], "different": []}
        for pair, m in zip(pairs, match_pairs(matcher, feats, pairs)):
            (k0, s0), (k1, s1) = ((feats[n]["keypoints"], feats[n]["scales"]) for n in (pair.name0, pair.name1))
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
