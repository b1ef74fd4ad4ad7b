"""Training a patch descriptor for Key.Net keypoints, from unlabelled photos.

Corresponding patches come for free from the detector's synthetic pairs (``keynet.train.synthesis``:
a crop and its view under a known random homography, with photometric jitter): Key.Net's keypoints
of the crop are mapped to the other view through the homography (position exactly, radius by the
square root of the local area change), each view's orientation is estimated on its own (the
gradient orientation of ``keynet.features.orientation``, so the network learns the orientation
errors it meets at test time), and both are sampled as 32x32 patches the way ``PatchDescriptor``
samples them at extraction. Keypoints whose square ``[-r, r]^2`` leaves either view are dropped.

The network is kornia's HardNet architecture, trained with HardNet's loss: the triplet margin loss
with the hardest negative in the batch (Mishchuk et al., NeurIPS 2017). Model selection uses
patches of photos held out of training (the detector's validation split); Oxford Affine, the test
set, is never seen. Runs are seeded, checkpointed atomically and resumable (``--resume``).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from keynet.io.files import write_atomic
from keynet.train.loop import CsvLog, RunFolders, atomic_save, epoch_order, git_commit, saved_options
from keynet.train.synthesis import HOMOGRAPHY_PRESETS, JitterConfig, PairConfig, load_or_generate
from keynet.weights import to_int8

CSV_FIELDS = ("step", "epoch", "wall_s", "lr", "loss", "val_loss", "val_accuracy")
PATCH = 32


@dataclass
class DescriptorTrainConfig(RunFolders):
    """Everything that defines a descriptor training run (stored in its checkpoints and weights)."""

    out_dir: str = "runs/descriptor"
    image_dir: str = ""  # default: <data>/train_images
    cache_dir: str = ""  # default: <out>/../pair_cache (shared with `keynet train`)
    num_pairs: int = 4000  # synthetic image pairs for training
    num_val_pairs: int = 100  # from the held-out photos
    crop: int = 256
    preset: str = "paper"
    num_keypoints: int = 300  # Key.Net detections per crop, before the visibility check
    keypoints: str = "subpixel"  # the detector's defaults + sub-pixel positions, or "extractor": as the Extractor detects them
    positives: str = "detected"  # "detected": the other view's own detection; "mapped": the mapped keypoint
    min_overlap: float = 0.6  # "detected": circle IoU of the mapped keypoint and the detection (Key.Net's protocol)
    border: str = "square"  # the part of each patch that must lie inside both crops: "square" (all of it) or "circle"
    width: float = 1.0  # channels of kornia's HardNet scaled by this (keynet.features.patchnet.ScaledHardNet)
    epochs: int = 3
    batch_size: int = 512
    lr: float = 1e-3  # Adam, cosine decay to lr / 100
    weight_decay: float = 1e-4
    margin: float = 1.0
    seed: int = 0
    threads: int = 0  # 0: torch's default
    bf16: bool = False  # bfloat16 autocast of the network's forward pass (the loss and the weights stay float32)
    patch_jitter: float = 0.0  # probability of each of a random gamma and a linear illumination ramp per training patch
    # Gaussian blur of the second view of a pair: its probability and the top of its sigma range (from 0.5 px);
    # the defaults are the pairs' own (synthesis.JitterConfig).
    blur_prob: float = JitterConfig.blur_prob
    blur_sigma: float = JitterConfig.blur_sigma[1]
    val_every: int = 200
    log_every: int = 20
    max_steps: int = 0  # 0: all epochs
    max_minutes: float = 0.0  # wall-time budget of the training loop, 0 = none


# ------------------------------------------------------------------------------------------ patches


def map_keypoints(h: np.ndarray, keypoints: np.ndarray, scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keypoints (N, 2) and radii (N,) of one view in the other view of the homography ``h`` (3, 3):
    positions mapped exactly, radii multiplied by ``sqrt(|det J|)`` of the local Jacobian J."""
    xh = np.c_[keypoints, np.ones(len(keypoints))] @ h.T
    w = xh[:, 2]
    mapped = xh[:, :2] / w[:, None]
    # J = (H[:2, :2] - x' H[2, :2]) / w for each point
    jac = (h[None, :2, :2] - mapped[:, :, None] * h[None, 2:3, :2]) / w[:, None, None]
    return mapped, scales * np.sqrt(np.abs(np.linalg.det(jac)))


KEYPOINT_OPTIONS = ("subpixel", "extractor")  # patch_pairs' keypoints: the detector's defaults + sub-pixel, the Extractor's
BORDER_REACH = {"square": np.sqrt(2.0), "circle": 1.0}  # radii of the rotated patch's corners, of its inscribed circle


def _inside(keypoints: np.ndarray, scales: np.ndarray, side: int, border: str) -> np.ndarray:
    """Whether the ``border`` part of each keypoint's patch, at any angle, lies inside a (side, side) view.
    Patch pixels outside the view repeat its edge, as in ``extract_patches``."""
    reach = BORDER_REACH[border] * scales[:, None]
    return np.all((keypoints - reach >= 0) & (keypoints + reach <= side - 1), axis=1)


def _detect(detector: Any, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    det = detector.detect(image)
    return det["keypoints"].numpy().astype(np.float64), det["scales"].numpy().astype(np.float64)


def detected_positives(kps_d: np.ndarray, r_d: np.ndarray, found: np.ndarray, r_found: np.ndarray,
                       min_overlap: float) -> np.ndarray:
    """For mapped keypoints ``kps_d`` (N, 2), radii ``r_d`` (N,), the index (N,) of the detection of
    the other view (``found`` (M, 2), ``r_found`` (M,)) each corresponds to, -1 for none: Key.Net's
    repeatability rule, circles of IoU at least ``min_overlap``, taken one-to-one greedily by
    decreasing IoU (``keynet.eval.protocols``)."""
    from keynet.eval.protocols import circle_iou, greedy_one_to_one

    match = np.full(len(kps_d), -1, np.int64)
    if len(kps_d) and len(found):
        dist = np.linalg.norm(kps_d[:, None] - found[None], axis=2)
        pairs = greedy_one_to_one(circle_iou(r_d[:, None], r_found[None], dist), min_overlap)
        match[pairs[:, 0]] = pairs[:, 1]
    return match


def patch_pairs(pairs: dict[str, np.ndarray], num_keypoints: int, progress: bool = True,
                positives: str = "mapped", min_overlap: float = 0.6, border: str = "square",
                keypoints: str = "subpixel") -> dict[str, np.ndarray]:
    """Corresponding (N, 32, 32) uint8 ``anchor`` and ``positive`` patches of the image ``pairs``
    (``src``, ``dst``, ``H`` as made by ``keynet.train.synthesis``), and ``pair`` (N,) the index of
    the image pair each comes from. The positive is sampled at the anchor keypoint mapped into the
    other view (``positives="mapped"``), or at the other view's own Key.Net detection that
    repeats it (``"detected"``: ``detected_positives``), so that the network also meets the
    detector's position and scale errors, as at test time. Keypoints whose patch (``border="square"``)
    or its inscribed circle (``"circle"``: more of the coarse levels, which a small crop rarely holds
    whole) leaves either view are dropped. Keypoints are detected with the detector's defaults and
    sub-pixel positions (``keypoints="subpixel"``, the shipped recipe's) or with the Extractor's
    detection options (``"extractor"``: the keypoints the descriptor meets in use)."""
    from keynet.detector import KeyNetDetector
    from keynet.features.descriptors import extract_patches
    from keynet.features.extractor import Extractor
    from keynet.features.orientation import GradientOrientation

    if positives not in ("mapped", "detected"):
        raise ValueError(f"positives must be 'mapped' or 'detected', not {positives!r}")
    if border not in BORDER_REACH:
        raise ValueError(f"border must be one of {', '.join(BORDER_REACH)}, not {border!r}")
    if keypoints not in KEYPOINT_OPTIONS:
        raise ValueError(f"keypoints must be one of {', '.join(KEYPOINT_OPTIONS)}, not {keypoints!r}")
    options = Extractor.default_detection() if keypoints == "extractor" else {"subpixel": True}
    detector = KeyNetDetector(num_keypoints=num_keypoints, **options)
    orientation = GradientOrientation()
    anchor_patches, positive_patches, index = [], [], []
    for i in tqdm(range(len(pairs["H"])), desc="patches", disable=not progress, mininterval=2.0):
        src = pairs["src"][i].astype(np.float32) / 255.0
        dst = pairs["dst"][i].astype(np.float32) / 255.0
        kps, r = _detect(detector, src)
        kps_d, r_d = map_keypoints(pairs["H"][i], kps, r)
        if positives == "detected":
            found, r_found = _detect(detector, dst)
            match = detected_positives(kps_d, r_d, found, r_found, min_overlap)
            ok = match >= 0
            kps_d[ok], r_d[ok] = found[match[ok]], r_found[match[ok]]
        else:
            ok = np.ones(len(kps), bool)
        keep = ok & _inside(kps, r, src.shape[0], border) & _inside(kps_d, r_d, dst.shape[0], border)
        if not keep.any():
            continue
        views = []
        for image, k, s in ((src, kps[keep], r[keep]), (dst, kps_d[keep], r_d[keep])):
            k, s = k.astype(np.float32), s.astype(np.float32)
            angles, _ = orientation.compute(image, k, s)
            views.append(extract_patches(image, k, s, angles, PATCH)[:, 0])
        anchor_patches.append(_to_uint8(views[0]))
        positive_patches.append(_to_uint8(views[1]))
        index.append(np.full(int(keep.sum()), i, np.int32))
    return {"anchor": np.concatenate(anchor_patches), "positive": np.concatenate(positive_patches),
            "pair": np.concatenate(index)}


def _to_uint8(patches: torch.Tensor) -> np.ndarray:
    return np.clip(np.round(patches.numpy() * 255.0), 0, 255).astype(np.uint8)


def pair_config(conf: DescriptorTrainConfig, split: str) -> PairConfig:
    """The synthetic image pairs of a run's ``split`` ("train" or "val")."""
    jitter = JitterConfig(blur_prob=conf.blur_prob, blur_sigma=(JitterConfig.blur_sigma[0], conf.blur_sigma))
    return PairConfig(num_pairs=conf.num_pairs if split == "train" else conf.num_val_pairs, crop=conf.crop,
                      homography=HOMOGRAPHY_PRESETS[conf.preset], jitter=jitter, seed=conf.seed, split=split)


def load_or_make_patches(conf: DescriptorTrainConfig, split: str, progress: bool = True) -> dict[str, np.ndarray]:
    """The patch pairs of ``split`` ("train" or "val"), cached in the run folder as ``.npz``."""
    out = Path(conf.out_dir)
    path = out / f"patches_{split}.npz"
    if path.is_file():
        with np.load(path) as f:
            return {k: f[k] for k in ("anchor", "positive", "pair")}
    pairs = load_or_generate(conf.resolved_image_dir(), pair_config(conf, split), conf.resolved_cache_dir(), progress)
    patches = patch_pairs(pairs, conf.num_keypoints, progress, conf.positives, conf.min_overlap, conf.border,
                          conf.keypoints)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: np.savez(tmp, **patches))
    return patches


# --------------------------------------------------------------------------------------------- loss


def hardest_triplet_loss(anchor: torch.Tensor, positive: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """HardNet's loss for L2-normalised descriptors (B, D) of B corresponding pairs: mean over i of
    ``max(0, margin + d(a_i, p_i) - min(min_{j != i} d(a_i, p_j), min_{j != i} d(a_j, p_i)))``."""
    dist = torch.cdist(anchor, positive).clamp_min(1e-8)
    pos = dist.diagonal()
    masked = dist + 10.0 * torch.eye(len(dist), dtype=dist.dtype, device=dist.device)  # d <= 2 for unit vectors
    neg = torch.minimum(masked.min(dim=1).values, masked.min(dim=0).values)
    return F.relu(margin + pos - neg).mean()


def _batch(patches: np.ndarray, idx: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(patches[idx]).float().div_(255.0)[:, None]


def patch_jitter(p: float) -> torch.nn.Module:
    """Photometric changes drawn per patch (B, 1, H, W) in [0, 1], on top of the image-level jitter
    of the synthetic pairs: with probability ``p`` a gamma in [0.5, 2] (a non-linear exposure
    change, which HardNet's per-patch mean/std normalisation does not remove), and independently
    with probability ``p`` a linear illumination ramp across the patch (a shadow or light edge).
    Draws from torch's global generator, whose state the checkpoints keep."""
    import kornia.augmentation as KA

    return torch.nn.Sequential(KA.RandomGamma(gamma=(0.5, 2.0), p=p),
                               KA.RandomLinearIllumination(gain=(0.05, 0.3), p=p))


@torch.no_grad()
def validate(net: torch.nn.Module, val: dict[str, np.ndarray], margin: float, chunk: int = 1000) -> tuple[float, float]:
    """Loss and nearest-neighbour accuracy (%) on the validation patches, in chunks of ``chunk`` pairs:
    the share of anchors whose nearest positive in the chunk is their own."""
    was = net.training
    net.eval()
    losses, hits, count = [], 0, 0
    for start in range(0, len(val["anchor"]) - 1, chunk):  # (a last chunk of one pair has no negative: skipped)
        idx = np.arange(start, min(start + chunk, len(val["anchor"])))
        a, p = net(_batch(val["anchor"], idx)), net(_batch(val["positive"], idx))
        losses.append(float(hardest_triplet_loss(a, p, margin)) * len(idx))
        hits += int((torch.cdist(a, p).argmin(dim=1) == torch.arange(len(idx))).sum())
        count += len(idx)
    net.train(was)
    return float(np.sum(losses) / count), 100.0 * hits / count


# ---------------------------------------------------------------------------------------------- run


def _run_defining(config: dict[str, Any]) -> dict[str, Any]:
    """The settings a resumed run must share with its checkpoint (not where or how long it runs)."""
    return {k: v for k, v in config.items() if k not in ("out_dir", "cache_dir", "threads", "max_steps", "max_minutes")}


def new_network(seed: int, width: float = 1.0) -> torch.nn.Module:
    from keynet.features.patchnet import ScaledHardNet

    torch.manual_seed(seed)
    return ScaledHardNet(width)


def train_descriptor(conf: DescriptorTrainConfig, resume: bool = False, progress: bool = True,
                     log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume from ``<out>/last.pt``) a descriptor training run; returns a summary."""
    from keynet.features.patchnet import ScaledHardNet

    t0 = time.perf_counter()
    if not (0.0 <= conf.blur_prob <= 1.0 and conf.blur_sigma >= JitterConfig.blur_sigma[0]):
        raise ValueError(f"blur_prob must be in [0, 1] and blur_sigma at least {JitterConfig.blur_sigma[0]}, "
                         f"not {conf.blur_prob} and {conf.blur_sigma}")
    ScaledHardNet.scaled_channels(conf.width)  # a bad width is refused before the patch synthesis
    if conf.threads:
        torch.set_num_threads(conf.threads)
    out = Path(conf.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train_set = load_or_make_patches(conf, "train", progress)
    val_set = load_or_make_patches(conf, "val", progress)
    n = len(train_set["anchor"])
    if n < conf.batch_size:
        raise ValueError(f"{n} training patch pairs, fewer than one batch of {conf.batch_size}")
    steps_per_epoch = n // conf.batch_size
    schedule = conf.epochs * steps_per_epoch  # the learning rate follows the whole run, also when cut short
    total = min(schedule, conf.max_steps) if conf.max_steps else schedule
    log(f"{n} training and {len(val_set['anchor'])} validation patch pairs, {total} steps "
        f"({time.perf_counter() - t0:.0f} s of patch synthesis)")

    net = new_network(conf.seed, conf.width)
    opt = torch.optim.Adam(net.parameters(), lr=conf.lr, weight_decay=conf.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.01 + 0.99 * 0.5 * (1 + np.cos(np.pi * min(s / schedule, 1.0))))
    step, best, wall_before = 0, {"step": -1, "val_accuracy": -1.0}, 0.0
    last = out / "last.pt"
    if resume and last.is_file():
        ckpt = torch.load(last, map_location="cpu", weights_only=False)
        if _run_defining(saved_options(ckpt["config"], DescriptorTrainConfig())) != _run_defining(asdict(conf)):
            raise ValueError(f"{last} was made with other settings; start a new run in another folder")
        net.load_state_dict(ckpt["net"])
        opt.load_state_dict(ckpt["opt"])
        sched.load_state_dict(ckpt["sched"])
        step, best, wall_before = ckpt["step"], ckpt["best"], ckpt["wall_s"]
        torch.set_rng_state(ckpt["rng"])  # HardNet's dropout
        log(f"resumed at step {step}")
    csv_log = CsvLog(out / "log.csv", step if resume else None, CSV_FIELDS)
    start_wall = time.perf_counter()

    def checkpoint() -> None:
        atomic_save({"net": net.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(), "step": step,
                     "best": best, "wall_s": wall_before + time.perf_counter() - start_wall, "config": asdict(conf),
                     "rng": torch.get_rng_state()}, last)

    jitter = patch_jitter(conf.patch_jitter) if conf.patch_jitter > 0 else torch.nn.Identity()
    net.train()
    running = []
    bar = tqdm(total=total, initial=step, desc="train", disable=not progress, mininterval=2.0)
    while step < total:
        epoch, within = divmod(step, steps_per_epoch)
        idx = epoch_order(conf.seed, epoch, n)[within * conf.batch_size : (within + 1) * conf.batch_size].numpy()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=conf.bf16):
            anchor = net(jitter(_batch(train_set["anchor"], idx)))
            positive = net(jitter(_batch(train_set["positive"], idx)))
        loss = hardest_triplet_loss(anchor.float(), positive.float(), conf.margin)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        step += 1
        bar.update(1)
        running.append(loss.item())
        wall = wall_before + time.perf_counter() - start_wall
        out_of_time = conf.max_minutes and wall > 60 * conf.max_minutes
        if step % conf.log_every == 0:
            csv_log.write(step=step, epoch=epoch, wall_s=round(wall, 1), lr=opt.param_groups[0]["lr"],
                          loss=float(np.mean(running)), val_loss=None, val_accuracy=None)
            running = []
        if step % conf.val_every == 0 or step == total or out_of_time:
            val_loss, accuracy = validate(net, val_set, conf.margin)
            csv_log.write(step=step, epoch=epoch, wall_s=round(wall, 1), lr=opt.param_groups[0]["lr"], loss=None,
                          val_loss=val_loss, val_accuracy=accuracy)
            if accuracy > best["val_accuracy"]:
                best = {"step": step, "val_accuracy": accuracy, "val_loss": val_loss}
                atomic_save({"net": net.state_dict(), "step": step, "config": asdict(conf)}, out / "best.pt")
            checkpoint()
            log(f"step {step}: val loss {val_loss:.4f}, nearest-neighbour accuracy {accuracy:.2f}%")
        if out_of_time:
            log(f"time budget of {conf.max_minutes} min spent at step {step}")
            break
    bar.close()
    write_curves(out / "log.csv", out / "curves.png")
    return {"steps": step, "best": best, "wall_s": round(wall_before + time.perf_counter() - start_wall, 1),
            "patch_pairs": n, "out": str(out)}


def write_curves(csv_path: Path, png_path: Path) -> None:
    """Loss and validation accuracy from the CSV log, as a PNG (matplotlib, Agg)."""
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for column, label in (("loss", "train (running mean)"), ("val_loss", "held-out photos")):
        points = [(int(r["step"]), float(r[column])) for r in rows if r[column]]
        if points:
            axes[0].plot(*zip(*points), label=label)
    accuracy = [(int(r["step"]), float(r["val_accuracy"])) for r in rows if r["val_accuracy"]]
    if accuracy:
        axes[1].plot(*zip(*accuracy), "o-")
    axes[0].set(xlabel="step", ylabel="hardest-in-batch triplet loss")
    axes[0].legend()
    axes[1].set(xlabel="step", ylabel="nearest-neighbour accuracy in 1000 (%)")
    fig.tight_layout()
    write_atomic(png_path, lambda tmp: fig.savefig(tmp, dpi=100))
    plt.close(fig)


def export_descriptor(best_path: str | Path, out_path: str | Path, recipe: dict[str, Any], int8: bool = True) -> Path:
    """The network of a ``best.pt`` as a weights file (``state_dict`` and ``recipe``) that
    ``make_descriptor("hardnet:PATH")`` and ``descriptor="keynet"`` read: by default its large
    tensors in int8 with a scale per output channel (``keynet.weights.to_int8``), a quarter of the
    float32 size, which the package ships; ``int8=False`` keeps float32."""
    ckpt = torch.load(best_path, map_location="cpu", weights_only=False)
    recipe = {**recipe, "config": ckpt["config"], "step": ckpt["step"], "commit": git_commit()}
    weights: dict[str, Any] = {"state_dict": ckpt["net"]}
    if int8:
        weights["state_dict"], weights["int8_scales"] = to_int8(ckpt["net"])
    out_path = Path(out_path)
    atomic_save({**weights, "recipe": json.loads(json.dumps(recipe, default=str))}, out_path)
    return out_path
