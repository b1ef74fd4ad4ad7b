"""Local-feature extraction throughput: keynet.Extractor against kornia's KeyNetAffNetHardNet and
OpenCV SIFT, in one process, on the eight Oxford Affine ``img1`` images at native size.

    python benchmarks/extract.py [--repeats 3] [--kornia-repeats 1] [--threads 2] [--num-keypoints 2048]

Each method extracts every image once per round (methods interleaved image by image, so that load
from elsewhere on the machine affects them alike, after one warm-up image each); a method's figure
is the median over rounds of its mean milliseconds per image. kornia's pipeline is built from its
parts with ``pretrained=False`` (kornia would download its weights; the time does not depend on
them). Also printed: the stages of keynet's extraction (detection, orientation, descriptor) and the
two targets: orientation + descriptor within 40% of detection, Tiny-Key.Net + SIFT no slower than
OpenCV SIFT detect+compute.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import cv2
import numpy as np
import torch

from keynet import Extractor
from keynet.features.descriptors import to_uint8
from keynet.io.image import load_image
from keynet.paths import shared_data_dir
from keynet.native import cpu_description

SEQUENCES = ("bark", "bikes", "boat", "graf", "leuven", "trees", "ubc", "wall")


def kornia_pipeline(num_keypoints: int) -> Callable[[np.ndarray], object]:
    """kornia's ``KeyNetAffNetHardNet`` (Key.Net, OriNet, AffNet shape, HardNet), untrained weights."""
    import kornia.feature as KF

    detector = KF.KeyNetDetector(
        False, num_features=num_keypoints, ori_module=KF.LAFOrienter(angle_detector=KF.OriNet(False)),
        aff_module=KF.LAFAffNetShapeEstimator(False, preserve_orientation=False).eval(),
    )  # fmt: skip
    feature = KF.LocalFeature(detector, KF.LAFDescriptor(KF.HardNet(False), patch_size=32)).eval()

    @torch.inference_mode()
    def run(image: np.ndarray) -> object:
        return feature(torch.from_numpy(image)[None, None])

    return run


def opencv_sift(num_keypoints: int) -> Callable[[np.ndarray], object]:
    sift = cv2.SIFT_create(nfeatures=num_keypoints)
    return lambda image: sift.detectAndCompute(to_uint8(image), None)


def stage_split(ext: Extractor, image: np.ndarray, repeats: int = 5) -> tuple[float, float]:
    """Median ms of the orientation and of the descriptor stage on one image."""
    det = ext.detector.detect(image)
    kps, scales = det["keypoints"].numpy(), det["scales"].numpy()
    ori, desc = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        angles, index = ext.orientation.compute(image, kps, scales)
        t1 = time.perf_counter()
        ext.descriptor.compute(image, kps[index], scales[index], angles)
        t2 = time.perf_counter()
        ori.append(t1 - t0)
        desc.append(t2 - t1)
    return 1e3 * statistics.median(ori), 1e3 * statistics.median(desc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--kornia-repeats", type=int, default=1, help="rounds for kornia's pipeline (slow)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--num-keypoints", type=int, default=2048)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    images = [load_image(shared_data_dir() / "oxford_affine" / s / "img1.png") for s in SEQUENCES]
    n = args.num_keypoints
    extractors = {
        "Key.Net": Extractor(num_keypoints=n),
        "Key.Net + upright copy": Extractor(num_keypoints=n, orientation="gradient+upright"),
        "Key.Net + HardTFeat": Extractor(num_keypoints=n, descriptor="hardtfeat"),
        "Key.Net + keynet": Extractor(num_keypoints=n, descriptor="keynet"),
        "Tiny-Key.Net": Extractor(num_keypoints=n, model="tiny"),
    }
    methods: dict[str, Callable[[np.ndarray], object]] = {
        "Key.Net detection": extractors["Key.Net"].detector.detect,
        "Key.Net + gradient + SIFT": extractors["Key.Net"].extract,
        "Key.Net + gradient+upright + SIFT": extractors["Key.Net + upright copy"].extract,
        "Key.Net + gradient + HardTFeat": extractors["Key.Net + HardTFeat"].extract,
        "Key.Net + gradient + keynet desc.": extractors["Key.Net + keynet"].extract,
        "Tiny-Key.Net detection": extractors["Tiny-Key.Net"].detector.detect,
        "Tiny-Key.Net + gradient + SIFT": extractors["Tiny-Key.Net"].extract,
        "OpenCV SIFT detect+compute": opencv_sift(n),
        "kornia KeyNetAffNetHardNet": kornia_pipeline(n),
    }
    rounds = {name: [] for name in methods}
    for r in range(max(args.repeats, args.kornia_repeats)):
        total = dict.fromkeys(methods, 0.0)
        active = [m for m in methods if r < (args.kornia_repeats if m.startswith("kornia") else args.repeats)]
        for i, image in enumerate(images):
            for name in active:
                if r == 0 and i == 0:
                    methods[name](image)  # warm-up
                t0 = time.perf_counter()
                methods[name](image)
                total[name] += time.perf_counter() - t0
        for name in active:
            rounds[name].append(1e3 * total[name] / len(images))
    ms = {name: statistics.median(v) for name, v in rounds.items()}

    sizes = sorted({f"{im.shape[1]}x{im.shape[0]}" for im in images})
    print(f"CPU: {cpu_description()}, {args.threads} threads; torch {torch.__version__}, OpenCV {cv2.__version__}")
    print(f"{len(images)} Oxford img1 images ({', '.join(sizes)}), {n} keypoints; "
          f"median of {args.repeats} rounds ({args.kornia_repeats} for kornia)\n")
    kornia, sift = ms["kornia KeyNetAffNetHardNet"], ms["OpenCV SIFT detect+compute"]
    print(f"{'method':34s} {'ms/image':>9s} {'kornia/this':>12s} {'this/OpenCV':>12s}")
    for name, v in ms.items():
        print(f"{name:34s} {v:9.1f} {kornia / v:11.1f}x {v / sift:11.2f}x")
    print()
    for label, model in (("Key.Net", "Key.Net"), ("Tiny-Key.Net", "Tiny-Key.Net")):
        o, d = stage_split(extractors[model], images[2])
        print(f"{label} stages on boat img1: orientation {o:.1f} ms, SIFT descriptor {d:.1f} ms")
    overhead = ms["Key.Net + gradient + SIFT"] / ms["Key.Net detection"] - 1
    print(f"\ntarget 1: orientation + SIFT descriptor add {100 * overhead:.0f}% to Key.Net's detection (<= 40%): "
          f"{'met' if overhead <= 0.4 else 'NOT met'}; Key.Net local features {kornia / ms['Key.Net + gradient + SIFT']:.1f}x "
          "faster than kornia's pipeline")
    tiny = ms["Tiny-Key.Net + gradient + SIFT"]
    print(f"target 2: Tiny-Key.Net + SIFT {tiny:.1f} ms vs OpenCV SIFT {sift:.1f} ms: {'met' if tiny <= sift else 'NOT met'}")


if __name__ == "__main__":
    main()
