"""Relative-pose AUC on the Strecha fountain's 15 pairs (known K, ground-truth cameras): features,
mutual nearest neighbours passing the ratio test (kornia's match_smnn, 0.85), essential matrix at
1 px by two estimators, cheirality, pose error = max(rotation, translation-direction angle). The
estimators: OpenCV's RANSAC (as SuperGlue's pose protocol and ``keynet eval`` use it) and OpenCV's
USAC MAGSAC++ (``keynet.matching.geometry``'s default, what keynet's own pipeline uses).

Methods: OpenCV SIFT, RootSIFT and AKAZE (each with its own keypoints and descriptor) and Key.Net
keypoints with upright SIFT and RootSIFT descriptors. Images are processed at most ``--max-size``
px on the longer side; keypoints are mapped back to the original pixels, where K holds.

    python benchmarks/pose.py [--max-size 1600] [--num-keypoints 8192] [--threshold 1.0]
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np

from keynet.eval.detectors import _cv_factory, to_uint8
from keynet.eval.pose import pose_auc, pose_error, strecha_pairs
from keynet.io.image import load_image
from keynet.matching.geometry import estimate_essential, recover_pose
from keynet.matching.matchers import Matcher, matches_to_pairs
from keynet.paths import shared_data_dir
from keynet.features import Extractor
from keynet.features.descriptors import rootsift
from keynet.features.extractor import resize_for_extraction, to_original_pixels


def opencv_fn(kind: str, n: int):
    impl = {"sift": lambda: cv2.SIFT_create(nfeatures=n), "rootsift": lambda: cv2.SIFT_create(nfeatures=n),
            "akaze": lambda: _cv_factory("AKAZE_create")(threshold=1e-4)}[kind]()

    def extract(image):
        kps, desc = impl.detectAndCompute(to_uint8(image), None)
        order = np.argsort([-k.response for k in kps], kind="stable")[:n]
        xy = np.array([kps[i].pt for i in order]).reshape(-1, 2)
        desc = desc[order]
        if kind == "akaze":
            desc = np.unpackbits(desc, axis=1).astype(np.float32)  # L2 on bits = sqrt(Hamming)
        elif kind == "rootsift":
            desc = rootsift(desc.astype(np.float32))
        return {"keypoints": xy, "descriptors": desc.astype(np.float32)}

    return extract


def keynet_fn(descriptor: str, num_keypoints: int, **options):
    """Upright Key.Net features of an (H, W) image as numpy arrays (``options``: more Extractor options)."""
    extractor = Extractor(descriptor=descriptor, orientation="upright", num_keypoints=num_keypoints, **options)
    return lambda image: {k: v.numpy() for k, v in extractor.extract(image).items()}


def fountain() -> tuple[list, dict[str, np.ndarray]]:
    """The Strecha fountain's 15 pairs with ground-truth cameras, and its 6 photos by name."""
    root = shared_data_dir() / "multiview" / "strecha_fountain_p11"
    names = [f"000{i}.jpg" for i in range(6)]
    return strecha_pairs(root / "gt_dense_cameras", names), {n: load_image(root / "images" / n) for n in names}


def extract_all(extract, images: dict[str, np.ndarray], max_size: int) -> dict[str, dict[str, np.ndarray]]:
    """``extract`` of each image shrunk to at most ``max_size`` px, keypoints in the image's own pixels."""
    feats = {}
    for name, image in images.items():
        small, sx, sy = resize_for_extraction(image, max_size)
        f = extract(small)
        feats[name] = {**f, "keypoints": to_original_pixels(f["keypoints"], sx, sy)}
    return feats


def match_pairs(matcher: Matcher, feats: dict[str, dict[str, np.ndarray]], pairs: list) -> list[np.ndarray]:
    """(M, 2) indices of each pair's matches, in the order of ``pairs``."""
    return [matches_to_pairs(matcher.match(feats[p.name0]["descriptors"], feats[p.name1]["descriptors"])[0])
            for p in pairs]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--max-size", type=int, default=1600)
    p.add_argument("--num-keypoints", type=int, default=8192)
    p.add_argument("--ratio", type=float, default=0.85)
    p.add_argument("--threshold", type=float, default=1.0, help="inlier threshold, px (default: %(default)s)")
    args = p.parse_args()
    pairs, images = fountain()
    methods = {
        "OpenCV SIFT": opencv_fn("sift", args.num_keypoints),
        "OpenCV RootSIFT": opencv_fn("rootsift", args.num_keypoints),
        "OpenCV AKAZE": opencv_fn("akaze", args.num_keypoints),
        "Key.Net + SIFT": keynet_fn("sift", args.num_keypoints),
        "Key.Net + RootSIFT": keynet_fn("rootsift", args.num_keypoints),
    }
    matcher = Matcher("smnn", args.ratio)
    estimators = {"RANSAC": cv2.RANSAC, "MAGSAC++": cv2.USAC_MAGSAC}
    print("| method | estimator | AUC@5 | AUC@10 | AUC@20 | matches (median) | inliers (median) | time (s) |\n"
          "|---|---|---|---|---|---|---|---|")
    for label, extract in methods.items():
        start = time.perf_counter()
        feats = extract_all(extract, images, args.max_size)
        seconds = time.perf_counter() - start
        matches = [(feats[p.name0]["keypoints"][m[:, 0]], feats[p.name1]["keypoints"][m[:, 1]])
                   for p, m in zip(pairs, match_pairs(matcher, feats, pairs))]
        count = np.median([len(x0) for x0, _ in matches])
        for estimator, method in estimators.items():
            errors, inliers = [], []
            for pair, (x0, x1) in zip(pairs, matches):
                g = estimate_essential(x0, x1, pair.K0, pair.K1, args.threshold, 0.99999, method=method)
                pose = recover_pose(g, x0, x1, pair.K0, pair.K1)
                errors.append(pose_error(*(pose or (None, None)), pair.R, pair.t))
                inliers.append(g.num_inliers)
            auc = [100 * a for a in pose_auc(errors)]
            print(f"| {label} | {estimator} | {auc[0]:.1f} | {auc[1]:.1f} | {auc[2]:.1f} | {count:.0f} | "
                  f"{np.median(inliers):.0f} | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
