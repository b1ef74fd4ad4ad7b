"""Speed of keynet against kornia and OpenCV, measured in one process on the same images and weights.

    python benchmarks/speed.py [--repeats 7] [--threads 2] [--memory]

Prints medians (wall-clock seconds); the ratio of each method to its anchor (kornia for Key.Net,
OpenCV SIFT for Tiny-Key.Net) and its range over the rounds; minor page faults per call; keypoint
agreement with kornia; the network's achieved GFLOP/s as a fraction of torch's fp32 matmul GFLOP/s
(its fastest repeat) measured in the same run; and, with --memory, the peak memory of one
detection (each in a fresh process). On a CPU with native bfloat16 it also times
``precision="bfloat16"`` (``--fast``), also with ``up_levels=0``, and reports the share of float32
keypoints bfloat16 keeps. With onnxruntime installed it also times the exported network run by
onnxruntime, alone and inside detection. Methods are interleaved within each repeat, each run
next to its anchor, so that load from elsewhere on the machine affects them alike.
"""

from __future__ import annotations

import argparse
import importlib.util
import resource
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from keynet import KeyNetDetector
from keynet.inference import FastKeyNet, native_bfloat16
from keynet.native import cpu_description
from keynet.parallel import run_tasks, tasks_disabled
from keynet.model import KeyNet
from keynet.paths import reference_weights_path, shared_data_dir
from keynet.weights import load_model, load_state_dict_file, shipped_weights_path
from memory import in_fresh_process, measure_peak  # benchmarks/ is on sys.path

NUM_KEYPOINTS = 2048


def test_images() -> dict[str, np.ndarray]:
    """Float (H, W) images in [0, 1]: two standard sizes cut and resized from a real photo, and a photo."""
    bikes = cv2.imread(str(shared_data_dir() / "oxford_affine/bikes/img1.png"), cv2.IMREAD_GRAYSCALE)
    graf = cv2.imread(str(shared_data_dir() / "oxford_affine/graf/img1.png"), cv2.IMREAD_GRAYSCALE)
    square = cv2.resize(bikes[:700, 150:850], (600, 600), interpolation=cv2.INTER_AREA)
    wide = cv2.resize(bikes, (1024, 768), interpolation=cv2.INTER_LINEAR)
    return {k: v.astype(np.float32) / 255 for k, v in
            {"600x600": square, "1024x768": wide, "graf 800x640": graf}.items()}


def network_flops(conf: dict, h: int, w: int) -> float:
    """Multiply-adds x 2 of one KeyNet forward on an (h, w) image (convolutions only)."""
    k2 = conf["kernel_size"] ** 2
    per_pixel = sum((10 if i == 0 else conf["num_filters"]) * conf["num_filters"] * k2
                    for i in range(conf["num_blocks"]))
    flops, hh, ww = 0.0, h, w
    for level in range(conf["num_levels"]):
        if level:
            hh, ww = int(hh / conf["pyramid_factor"]), int(ww / conf["pyramid_factor"])
        flops += 2 * per_pixel * hh * ww
    last = conf["num_filters"] * conf["num_levels"] * conf["last_kernel_size"] ** 2
    return flops + 2 * last * h * w


def detector_flops(det: KeyNetDetector, conf: dict, h: int, w: int) -> float:
    return sum(network_flops(conf, *lvl.shape[-2:]) for lvl, _, _ in det._levels(torch.zeros(1, 1, h, w)))


def matmul_gflops(repeats: int) -> float:
    a = torch.randn(2048, 2048)
    b = torch.randn(2048, 2048)
    # the fastest repeat: what the hardware reaches (the median moved by 2x between runs on a shared VM)
    return 2 * 2048**3 / min(time_methods({"matmul": lambda: a @ b}, repeats)["matmul"]) / 1e9


def export_onnx_files() -> Path | None:
    """A folder with the reference weights exported to ONNX (response network and detection up to
    top-k), or None without onnxruntime."""
    if importlib.util.find_spec("onnxruntime") is None:
        return None
    from keynet.export import export_detector_onnx, export_onnx

    folder = Path(tempfile.mkdtemp())
    with warnings.catch_warnings():  # the exporter's notes on constant folding and traced shapes
        warnings.simplefilter("ignore")
        export_onnx(load_model(reference_weights_path()), folder / "keynet.onnx")
        det = KeyNetDetector(weights=reference_weights_path(), num_keypoints=NUM_KEYPOINTS)
        export_detector_onnx(det, folder / "keynet_detector.onnx")
    return folder


def conv_gflops(repeats: int, threads: int) -> dict[str, float]:
    """GFLOP/s of Key.Net's typical convolution (8 -> 8 channels, 5x5, channels-last, 600x600):
    one at a time on one thread, one at a time on ``threads`` intra-op threads, and ``threads`` of
    them at once, one per thread (how keynet.parallel runs them); and in bfloat16 on ``threads``
    threads where the CPU has it natively."""
    x = torch.rand(1, 8, 600, 600).contiguous(memory_format=torch.channels_last)
    w = torch.randn(8, 8, 5, 5).contiguous(memory_format=torch.channels_last)
    flops = 2 * 8 * 8 * 25 * 600 * 600

    def conv(x: torch.Tensor = x, w: torch.Tensor = w) -> None:
        F.conv2d(x, w, padding=2)

    def gflops(fn: Callable[[], object], n: int) -> float:
        return n * flops / statistics.median(time_methods({"conv": fn}, repeats)["conv"]) / 1e9

    torch.set_num_threads(1)
    one = gflops(conv, 1)
    torch.set_num_threads(threads)
    intra = gflops(conv, 1)
    side_by_side = gflops(lambda: run_tasks([conv] * threads), threads)
    rates = {"1 thread": one, f"{threads} intra-op threads": intra, f"{threads} at once, 1 thread each": side_by_side}
    if native_bfloat16():
        xb, wb = x.bfloat16(), w.bfloat16()
        rates[f"bfloat16 on {threads} intra-op threads"] = gflops(lambda: conv(xb, wb), 1)
    return rates


def batch_seconds_per_image(image: np.ndarray, repeats: int, batch: int = 4) -> tuple[float, float]:
    """Median seconds per image of one (batch,1,H,W) detection and of the same images one by one."""
    x = torch.from_numpy(image)[None, None]
    xb = torch.cat([x, x.flip(-1), x.flip(-2), x.flip(-1).flip(-2)][:batch])
    det = KeyNetDetector(weights=reference_weights_path(), num_keypoints=NUM_KEYPOINTS)
    times = time_methods({"batch": lambda: det.detect(xb),
                          "singles": lambda: [det.detect(xb[i : i + 1]) for i in range(batch)]}, repeats)
    return statistics.median(times["batch"]) / batch, statistics.median(times["singles"]) / batch


def detect_without_tasks(det: KeyNetDetector, x: torch.Tensor) -> object:
    with tasks_disabled():
        return det.detect(x)


def build_methods(image: np.ndarray, onnx_dir: Path | None) -> dict[str, Callable[[], object]]:
    """Name -> a callable running one detection (or response map) on ``image``."""
    import kornia.feature as KF

    ref = reference_weights_path()
    x = torch.from_numpy(image)[None, None]
    u8 = np.round(image * 255).astype(np.uint8)
    kornia_net = KF.KeyNet(pretrained=False)
    kornia_net.load_state_dict(load_state_dict_file(ref))
    kornia_net.eval()
    kornia_det = KF.KeyNetDetector(pretrained=False, num_features=NUM_KEYPOINTS)
    kornia_det.model.load_state_dict(load_state_dict_file(ref))
    kornia_det.eval()
    ours_net = FastKeyNet(load_model(ref))
    ours_compat = KeyNetDetector(weights=ref, num_keypoints=NUM_KEYPOINTS, compat="kornia")
    ours = KeyNetDetector(weights=ref, num_keypoints=NUM_KEYPOINTS)
    no_up = KeyNetDetector(weights=ref, num_keypoints=NUM_KEYPOINTS, up_levels=0)
    sift = cv2.SIFT_create(nfeatures=NUM_KEYPOINTS)
    methods = {
        "kornia KeyNet response": lambda: kornia_net(x),
        "keynet response": lambda: ours_net(x),
        "kornia KeyNetDetector": lambda: kornia_det(x),
        "keynet detect compat=kornia": lambda: ours_compat.detect(x),
        "keynet detect": lambda: ours.detect(x),
        "keynet detect, intra-op threads only": lambda: detect_without_tasks(ours, x),
        "keynet detect up_levels=0": lambda: no_up.detect(x),
        "OpenCV SIFT detect": lambda: sift.detect(u8, None),
    }
    tiny = shipped_weights_path("tiny")
    if tiny.is_file():  # right after its anchor, so that both run in the same state of the machine
        tiny_det = KeyNetDetector(model="tiny", num_keypoints=NUM_KEYPOINTS)
        methods["keynet tiny detect"] = lambda: tiny_det.detect(x)
    if native_bfloat16():  # emulated elsewhere, and slower than float32 (the detectors would warn)
        ours_net_bf16 = FastKeyNet(load_model(ref), torch.bfloat16)
        bf16 = KeyNetDetector(weights=ref, num_keypoints=NUM_KEYPOINTS, precision="bfloat16")
        no_up_bf16 = KeyNetDetector(weights=ref, num_keypoints=NUM_KEYPOINTS, up_levels=0, precision="bfloat16")
        methods["keynet response bfloat16"] = lambda: ours_net_bf16(x)
        methods["keynet detect bfloat16 (--fast)"] = lambda: bf16.detect(x)
        methods["keynet detect up_levels=0, bfloat16"] = lambda: no_up_bf16.detect(x)
    if onnx_dir is not None:
        from keynet.export import OnnxDetector, OnnxResponse

        ort_net = OnnxResponse(onnx_dir / "keynet.onnx")  # onnxruntime's own threads, as many as torch's
        # in detection the pyramid levels already run on torch's threads: one onnxruntime thread each
        ort_det = KeyNetDetector(network=OnnxResponse(onnx_dir / "keynet.onnx", num_threads=1),
                                 num_keypoints=NUM_KEYPOINTS)
        ort_graph = OnnxDetector(onnx_dir / "keynet_detector.onnx")
        methods["onnxruntime response"] = lambda: ort_net(x)
        methods["keynet detect, onnxruntime network"] = lambda: ort_det.detect(x)
        methods["onnxruntime detection graph"] = lambda: ort_graph.detect(x)
    return methods


def time_methods(methods: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Each method's wall-clock seconds in each of ``repeats`` rounds (methods interleaved in a round)."""
    return {name: [t for t, _ in runs] for name, runs in run_rounds(methods, repeats).items()}


def run_rounds(methods: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[tuple[float, int]]]:
    """(seconds, minor page faults of the process) of each call, per method, over ``repeats`` rounds.

    The faults show memory that the allocator had given back to the system and a call asked for again:
    the first touch of each page costs a fault, about a millisecond per megabyte on this project's VMs."""
    runs: dict[str, list[tuple[float, int]]] = {name: [] for name in methods}
    with torch.inference_mode():
        for fn in methods.values():
            fn()  # warm-up: allocator, oneDNN primitive cache
        for _ in range(repeats):
            for name, fn in methods.items():
                faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                t = time.perf_counter()
                fn()
                runs[name].append((time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults))
    return runs


def _share_found(a: torch.Tensor, b: torch.Tensor) -> float:
    """Share of rows (x, y, scale) of ``a`` that ``b`` has within 1e-3."""
    return ((a.double()[:, None] - b.double()[None]).abs().amax(-1).min(1).values < 1e-3).double().mean().item()


def _rows(out: dict) -> torch.Tensor:
    return torch.cat([out["keypoints"], out["scales"][:, None]], 1)


def keypoint_agreement(image: np.ndarray) -> dict[str, float]:
    """Share of kornia's keypoints that keynet's compat mode returns, and (where the CPU has native
    bfloat16) share of the float32 detector's keypoints that the bfloat16 one returns (position and
    scale within 1e-3)."""
    import kornia.feature as KF

    ref = reference_weights_path()
    x = torch.from_numpy(image)[None, None]
    kd = KF.KeyNetDetector(pretrained=False, num_features=NUM_KEYPOINTS)
    kd.model.load_state_dict(load_state_dict_file(ref))
    kd.eval()
    shares = {}
    with torch.inference_mode():
        lafs, _ = kd(x)
        ours = KeyNetDetector(weights=ref, num_keypoints=NUM_KEYPOINTS, compat="kornia").detect(x)[0]
        kornia_rows = torch.cat([lafs[0, :, :, 2], lafs[0, :, 0, 0, None]], 1)
        shares["compat=kornia keypoints identical to kornia's"] = _share_found(kornia_rows, _rows(ours))
        if native_bfloat16():
            exact = KeyNetDetector(weights=ref, num_keypoints=NUM_KEYPOINTS).detect(x)[0]
            bf16 = KeyNetDetector(weights=ref, num_keypoints=NUM_KEYPOINTS, precision="bfloat16").detect(x)[0]
            shares["float32 keypoints that bfloat16 also returns"] = _share_found(_rows(exact), _rows(bf16))
    return shares


def _peak_of(name: str, size: str, threads: int, onnx_dir: Path | None) -> float:
    torch.set_num_threads(threads)
    fn = build_methods(test_images()[size], onnx_dir)[name]
    with torch.inference_mode():
        return measure_peak(fn)[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--memory", action="store_true", help="also measure peak memory (slower)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {cpu_description()}, {args.threads} threads, torch {torch.__version__}, "
          f"native bfloat16: {'yes' if native_bfloat16() else 'no'}")
    mm = matmul_gflops(args.repeats)
    print(f"torch fp32 matmul (2048^2, fastest repeat): {mm:.1f} GFLOP/s")
    conv = conv_gflops(args.repeats, args.threads)
    print("conv 8->8 5x5 at 600x600: " + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in conv.items()) + "\n")
    conf = KeyNet().conf
    onnx_dir = export_onnx_files()
    for size, image in test_images().items():
        h, w = image.shape
        methods = build_methods(image, onnx_dir)
        runs = run_rounds(methods, args.repeats)
        times = {name: [t for t, _ in r] for name, r in runs.items()}
        med = {name: statistics.median(t) for name, t in times.items()}
        print(f"## {size}  (median of {args.repeats}, seconds; ratio = anchor time / method time, and its range "
              "over the rounds; minor page faults per call, median)")
        anchors = {"keynet response": "kornia KeyNet response",
                   "onnxruntime response": "kornia KeyNet response",
                   "keynet detect, onnxruntime network": "kornia KeyNetDetector",
                   "onnxruntime detection graph": "kornia KeyNetDetector",
                   "keynet detect compat=kornia": "kornia KeyNetDetector",
                   "keynet detect": "kornia KeyNetDetector",
                   "keynet detect, intra-op threads only": "kornia KeyNetDetector",
                   "keynet detect up_levels=0": "kornia KeyNetDetector",
                   "keynet response bfloat16": "kornia KeyNet response",
                   "keynet detect bfloat16 (--fast)": "kornia KeyNetDetector",
                   "keynet detect up_levels=0, bfloat16": "kornia KeyNetDetector",
                   "keynet tiny detect": "OpenCV SIFT detect"}
        det = KeyNetDetector(weights=reference_weights_path())
        no_up = KeyNetDetector(weights=reference_weights_path(), up_levels=0)
        flops = {"keynet response": network_flops(conf, h, w),
                 "onnxruntime response": network_flops(conf, h, w),
                 "keynet detect compat=kornia": detector_flops(det, conf, h, w),
                 "keynet detect": detector_flops(det, conf, h, w),
                 "keynet detect, intra-op threads only": detector_flops(det, conf, h, w),
                 "keynet detect up_levels=0": detector_flops(no_up, conf, h, w),
                 "keynet response bfloat16": network_flops(conf, h, w),
                 "keynet detect bfloat16 (--fast)": detector_flops(det, conf, h, w),
                 "keynet detect up_levels=0, bfloat16": detector_flops(no_up, conf, h, w),
                 "keynet detect, onnxruntime network": detector_flops(det, conf, h, w),
                 "onnxruntime detection graph": detector_flops(det, conf, h, w)}
        for name, t in med.items():
            line = f"  {name:40s} {t:8.4f} {statistics.median(f for _, f in runs[name]):7.0f} faults"
            if name in anchors:
                per_round = [a / m for a, m in zip(times[anchors[name]], times[name])]
                line += (f"   {med[anchors[name]] / t:5.2f}x ({min(per_round):.2f}-{max(per_round):.2f})"
                         f" vs {anchors[name]}")
            if name in flops:
                g = flops[name] / t / 1e9
                line += f"   {g:6.1f} GFLOP/s = {g / mm:4.0%} of matmul"
            if args.memory:
                line += f"   peak {in_fresh_process(_peak_of, name, size, args.threads, onnx_dir):7.1f} MB"
            print(line, flush=True)
        print(f"  network GFLOP per detection: {flops['keynet detect'] / 1e9:.1f}")
        per_batch, per_single = batch_seconds_per_image(image, args.repeats)
        print(f"  keynet detect on a batch of 4: {per_batch:.4f} s per image, one by one {per_single:.4f} s")
        for what, share in keypoint_agreement(image).items():
            print(f"  {what}: {share:.2%}")
        print()


if __name__ == "__main__":
    main()
