"""The training loop: Adam on M-SIP over cached synthetic pairs, real-image validation, checkpoints.

- Data order is a function of (seed, epoch) only, and the learning rate a function of the step, so a
  run resumed from ``last.pt`` continues exactly as if it had not stopped (CPU, same thread count);
  with a wall-time budget (``max_minutes``) the schedule may also follow the clock, and then a
  resumed run is the same run but not bit-identical.
- Model selection uses the Key.Net repeatability (multi-scale detector, top 1000) on a real sequence
  (HPatches ``v_dogman`` by default); the synthetic 384 px validation pairs give a validation loss
  for the log only (it ranked runs the wrong way round in a prototype).
- Checkpoints and logs are written to a temporary file and moved into place (``keynet.io.files.write_atomic``).
- Distributed data parallel when started by ``torchrun`` (gloo backend on CPU): every rank takes
  its share of each global batch; rank 0 validates and writes files.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from ..detector import KeyNetDetector
from ..eval.datasets import load_dataset
from ..eval.protocols import keynet_repeatability
from ..inference import downsampled_side, pyrdown
from ..io.files import write_atomic
from ..io.image import load_image
from ..model import KeyNet, build_model
from ..paths import shared_data_dir
from ..weights import load_model
from .loss import MSIP_SIZES, MSIP_WEIGHTS, msip_loss, scale_selection_loss, sparsity_loss
from .synthesis import HOMOGRAPHY_PRESETS, JitterConfig, PairConfig, load_or_generate, photo_folder

CSV_FIELDS = ("step", "epoch", "wall_s", "lr", "loss", "score_max", "pos_share", "val_loss", "val_rep_SL", "val_rep_L")


class RunFolders:
    """Defaults of a training run's folders, for configs with ``image_dir``, ``cache_dir`` and
    ``out_dir`` fields (the detector's ``TrainConfig`` and the descriptor's)."""

    image_dir: str
    cache_dir: str
    out_dir: str

    def resolved_image_dir(self) -> Path:
        return photo_folder(self.image_dir)

    def resolved_cache_dir(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else Path(self.out_dir).parent / "pair_cache"


@dataclass
class TrainConfig(RunFolders):
    """Every option of a run. Defaults and their sources:

    - batch 32, lr 1e-3, Adam, 25 epochs, step decay x0.7 every 10 epochs, border 16, 192 px
      crops, 384 px validation crops, ~4,000 training pairs, M-SIP sizes/weights: the released
      code (axelBarroso/Key.Net ``train_network.py``); the paper states the same optimiser and loss.
    - Here the defaults are sized for a 2-core CPU and a 60-minute budget, pair synthesis included
      (a step costs 0.1-0.5 s per pair, depending on the load): batch 8 (more updates in the budget
      than 32 or 16), lr 1e-3 (3e-3 led after 30 steps but fell behind over a longer run on
      v_dogman), the released homography ranges (short checks of both presets and of a sharper
      window weighting, ``temperature`` 0.1, were within noise of each other), a cosine schedule to
      5% of the lr over the run instead of the step decay (short runs
      never reach the first decay), 8,000 pairs, 2 epochs or 55 minutes (``max_minutes``), whichever
      ends first; validation on v_dogman every 100 steps.
    """

    out_dir: str = "runs/keynet"
    model: str = "keynet"  # "keynet" | "tiny"
    image_dir: str = ""  # "" = <shared data>/train_images
    cache_dir: str = ""  # "" = <out_dir>/../pair_cache (shared between runs)
    preset: str = "released"  # homography ranges, see synthesis.HOMOGRAPHY_PRESETS
    num_pairs: int = 8000
    num_val_pairs: int = 16
    crop: int = 192
    val_crop: int = 384
    epochs: int = 2
    batch_size: int = 8
    lr: float = 1e-3
    lr_schedule: str = "cosine"  # "cosine" | "step" | "constant"
    min_lr_ratio: float = 0.05  # cosine: final lr = lr * min_lr_ratio
    lr_decay: float = 0.7  # step: factor every lr_decay_epochs (released code: 0.7 / 10)
    lr_decay_epochs: float = 10.0
    weight_decay: float = 0.0  # the released code defines 1e-5 but does not apply it
    border: int = 16
    temperature: float = 1.0  # softmax temperature of the loss's window weighting (see loss.ip_loss)
    sparsity: float = 0.0  # weight of loss.sparsity_loss added to M-SIP (0: the paper's loss)
    # Weight of loss.scale_selection_loss (on stacks of the responses to `scale_levels` pyramid levels,
    # the detector's factor apart) added to the paper's M-SIP: it trains which level a structure fires
    # on, which the per-map loss leaves free. 0: the paper's loss.
    scale_weight: float = 0.0
    scale_levels: int = 4
    init: str = ""  # weights to start from instead of the seeded initialisation ("" = from scratch)
    msip_sizes: tuple[int, ...] = MSIP_SIZES
    msip_weights: tuple[float, ...] = MSIP_WEIGHTS
    seed: int = 0
    threads: int = 2
    bf16: bool = False
    val_every: int = 100  # steps between validations/checkpoints; 0 = once per epoch
    val_sequence: str = ""  # "" = <shared data>/hpatches/v_dogman; "none" disables it
    val_top_k: int = 1000
    keep_checkpoints: bool = False  # also the weights of every validated step, <out>/steps/step_NNNNNN.pt
    log_every: int = 10
    max_steps: int = 0  # stop after this many steps in total (0 = epochs * steps per epoch); for tests
    # Wall-time budget (0 = off): the cosine schedule follows the wall time when that is ahead of the
    # step count, and the run validates, checkpoints and ends once the budget is spent.
    max_minutes: float = 55.0
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes stored in the checkpoint


# Options that must match for a resumed run to be the same run.
_RESUME_KEYS = ("model", "image_dir", "preset", "num_pairs", "crop", "epochs", "batch_size", "lr", "lr_schedule",
                "min_lr_ratio", "lr_decay", "lr_decay_epochs", "weight_decay", "border", "temperature", "sparsity", "scale_weight",
                "scale_levels", "init", "msip_sizes", "msip_weights", "seed")


def saved_options(config: dict[str, Any], defaults: Any) -> dict[str, Any]:
    """A checkpoint's stored ``config``, with the value in ``defaults`` (a config dataclass) for each
    option added since the run was saved, so that older runs still resume."""
    return {**asdict(defaults), **config}


def init_weights(model: nn.Module, seed: int) -> None:
    """He-normal convolutions, zero biases (as the released code). PyTorch's default init gives an
    all-zero response after the final ReLU that never starts learning."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            std = math.sqrt(2.0 / (m.in_channels * m.kernel_size[0] * m.kernel_size[1]))
            with torch.no_grad():
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * std)
                m.bias.zero_()


def learning_rate(conf: TrainConfig, step: int, total_steps: int, steps_per_epoch: int, time_fraction: float = 0.0) -> float:
    """The learning rate at ``step`` (0-based).

    ``time_fraction`` (wall time / ``max_minutes``) advances the cosine schedule when it is ahead of
    ``step / total_steps``, so a run on a slower or busier machine still anneals within its budget.
    """
    if conf.lr_schedule == "constant":
        return conf.lr
    if conf.lr_schedule == "step":
        return conf.lr * conf.lr_decay ** math.floor(step / (conf.lr_decay_epochs * steps_per_epoch))
    if conf.lr_schedule == "cosine":
        t = min(max(step / max(total_steps, 1), time_fraction), 1.0)
        return conf.lr * (conf.min_lr_ratio + (1.0 - conf.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * t)))
    raise ValueError(f"unknown lr_schedule {conf.lr_schedule!r}")


def epoch_order(seed: int, epoch: int, num_pairs: int) -> torch.Tensor:
    """The pair order of ``epoch``: a permutation that depends on (seed, epoch) only."""
    return torch.randperm(num_pairs, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` through ``write_atomic`` (a temporary file renamed: never a partial file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: torch.save(obj, tmp))


def git_commit() -> str:
    """The repository's HEAD commit, with ``+dirty`` when keynet/ has uncommitted changes; "" if unknown."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "keynet"], cwd=root, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""
    return head + ("+dirty" if dirty else "")


def to_views(pairs: dict[str, np.ndarray], idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batch ``idx`` of the pairs: src, dst (B, 1, S, S) float32 in [0, 1] and H (B, 3, 3) float32."""
    i = idx.numpy()
    src = torch.from_numpy(pairs["src"][i]).float().div_(255.0)[:, None]
    dst = torch.from_numpy(pairs["dst"][i]).float().div_(255.0)[:, None]
    return src, dst, torch.from_numpy(pairs["H"][i]).float()


def response_stack(model: nn.Module, views: torch.Tensor, levels: int, factor: float) -> torch.Tensor:
    """(B, levels, H, W): the response to each of ``levels`` pyramid levels of the (B, 1, H, W)
    ``views``, made as the detector makes its downsampled levels (``pyrdown`` by ``factor``), and
    resampled to the views' size (bilinear, pixel centres aligned as the detector maps level pixels)."""
    size = views.shape[-2:]
    maps, level = [model(views)], views
    for _ in range(1, levels):
        level = pyrdown(level, (downsampled_side(level.shape[-2], factor), downsampled_side(level.shape[-1], factor)))
        maps.append(nn.functional.interpolate(model(level), size=size, mode="bilinear", align_corners=False))
    return torch.cat(maps, 1)


class RealValidation:
    """Mean Key.Net repeatability (rep_SL, rep_L, top-k, multi-scale detector) over a sequence's pairs."""

    def __init__(self, sequence: Path, top_k: int) -> None:
        self.pairs = load_dataset(sequence).pairs
        if not self.pairs:
            raise ValueError(f"no image pairs in {sequence}")
        self.images = {p: load_image(p) for pair in self.pairs for p in (pair.image_a, pair.image_b)}
        self.top_k = top_k

    def __call__(self, net: KeyNet) -> tuple[float, float]:
        was_training = net.training
        det = KeyNetDetector(network=net, num_keypoints=self.top_k)  # puts net in eval mode
        found = {}
        for path, image in self.images.items():
            out = det.detect(image)
            found[path] = tuple(out[k].numpy() for k in ("keypoints", "scales", "scores"))
        sl, l = [], []
        for p in self.pairs:
            a, b = found[p.image_a], found[p.image_b]
            r = keynet_repeatability(*a, *b, p.H, self.images[p.image_a].shape, self.images[p.image_b].shape, top_k=self.top_k)
            sl.append(r["rep_SL"])
            l.append(r["rep_L"])
        net.train(was_training)
        return float(np.mean(sl)), float(np.mean(l))


def synthetic_val_loss(net: KeyNet, pairs: dict[str, np.ndarray], conf: TrainConfig, batch: int = 8) -> float:
    """Mean M-SIP loss of the network (eval mode) on the validation pairs."""
    was_training = net.training
    net.eval()
    losses = []
    with torch.no_grad():
        for start in range(0, len(pairs["H"]), batch):
            src, dst, h = to_views(pairs, torch.arange(start, min(start + batch, len(pairs["H"]))))
            score = net(torch.cat([src, dst]))
            loss, _ = msip_loss(score[: len(h)], score[len(h) :], h, conf.msip_sizes, conf.msip_weights, conf.border, conf.temperature)
            losses.append(float(loss) * len(h))
    net.train(was_training)
    return float(np.sum(losses) / len(pairs["H"]))


def write_plot(csv_path: Path, png_path: Path) -> None:
    """Training loss and validation curves from the CSV log, as a PNG (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    train = [(int(r["step"]), float(r["loss"])) for r in rows if r["loss"]]
    val = [r for r in rows if r["val_loss"]]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    if train:
        axes[0].plot(*zip(*train), label="train M-SIP (running mean)")
    if val:
        axes[0].plot([int(r["step"]) for r in val], [float(r["val_loss"]) for r in val], "o-", label="val M-SIP (384 px pairs)")
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("loss")
    axes[0].set_yscale("log")
    axes[0].legend()
    val_rep = [r for r in val if r["val_rep_SL"]]
    if val_rep:
        steps = [int(r["step"]) for r in val_rep]
        axes[1].plot(steps, [float(r["val_rep_SL"]) for r in val_rep], "o-", label="rep_SL")
        axes[1].plot(steps, [float(r["val_rep_L"]) for r in val_rep], "s-", label="rep_L")
        axes[1].legend()
    axes[1].set_xlabel("step")
    axes[1].set_ylabel("repeatability (real validation sequence)")
    fig.tight_layout()
    write_atomic(png_path, lambda tmp: fig.savefig(tmp, dpi=100))
    plt.close(fig)


class CsvLog:
    """Append-only CSV log; on resume, rows after the checkpoint's step are dropped (they were
    written by the part of the run that is being redone)."""

    def __init__(self, path: Path, resume_step: int | None, fields: tuple[str, ...] = CSV_FIELDS) -> None:
        self.path = path
        self.fields = fields
        rows = []
        if resume_step is not None and path.is_file():
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]

        def write(tmp: Path) -> None:
            with open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, fields)
                w.writeheader()
                w.writerows(rows)

        write_atomic(path, write)

    def write(self, **row: Any) -> None:
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.fields).writerow({k: ("" if v is None else v) for k, v in row.items()})


def _dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def train(conf: TrainConfig, resume: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) a training run; returns a summary (best step and metrics, wall time, paths).

    Files in ``conf.out_dir``: ``last.pt`` (full state, for resuming), ``best.pt`` (weights of the best
    validation), ``log.csv``, ``curves.png``; with ``keep_checkpoints``, ``steps/step_NNNNNN.pt``.
    """
    t_start = time.time()
    torch.set_num_threads(conf.threads)
    torch.manual_seed(conf.seed)
    own_group = "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1 and not dist.is_initialized()
    if own_group:
        dist.init_process_group("gloo")
    rank, world = _dist_info()
    if conf.batch_size % world:
        raise ValueError(f"batch size {conf.batch_size} is not divisible by the {world} processes")
    if conf.preset not in HOMOGRAPHY_PRESETS:
        raise ValueError(f"unknown preset {conf.preset!r}; choose one of {sorted(HOMOGRAPHY_PRESETS)}")
    out = Path(conf.out_dir)
    main_proc = rank == 0
    if main_proc:
        out.mkdir(parents=True, exist_ok=True)

    # Pair synthesis (rank 0 first, so the other ranks read its cache instead of redoing it).
    def pair_conf(split: str, n: int, crop: int) -> PairConfig:
        return PairConfig(num_pairs=n, crop=crop, homography=HOMOGRAPHY_PRESETS[conf.preset], jitter=JitterConfig(), seed=conf.seed, split=split)

    def load_pairs() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        kw = dict(image_dir=conf.resolved_image_dir(), cache_dir=conf.resolved_cache_dir(), progress=conf.progress and main_proc)
        return (load_or_generate(conf=pair_conf("train", conf.num_pairs, conf.crop), **kw),
                load_or_generate(conf=pair_conf("val", conf.num_val_pairs, conf.val_crop), **kw))

    if main_proc:
        train_pairs, val_pairs = load_pairs()
    if world > 1:
        dist.barrier()
    if not main_proc:
        train_pairs, val_pairs = load_pairs()
    t_data = time.time() - t_start

    net = build_model(conf.model)
    init_weights(net, conf.seed)
    if conf.init:
        net.load_state_dict(load_model(conf.init, conf.model).state_dict())
    net.train()
    model: nn.Module = nn.parallel.DistributedDataParallel(net) if world > 1 else net
    opt = torch.optim.Adam(net.parameters(), lr=conf.lr, weight_decay=conf.weight_decay)
    level_factor = KeyNetDetector.default_conf["scale_factor"]  # between the levels of the scale term's stacks

    n_pairs = len(train_pairs["H"])
    steps_per_epoch = n_pairs // conf.batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"{n_pairs} pairs give no batch of {conf.batch_size}")
    total_steps = conf.epochs * steps_per_epoch
    stop_step = min(total_steps, conf.max_steps) if conf.max_steps else total_steps
    val_every = conf.val_every or steps_per_epoch

    step, best, elapsed_before = 0, {"score": -math.inf}, 0.0
    last_path, best_path = out / "last.pt", out / "best.pt"
    if resume and last_path.is_file():
        ckpt = torch.load(last_path, map_location="cpu", weights_only=False)
        old = saved_options(ckpt["config"], TrainConfig())
        diff = {k: (old[k], getattr(conf, k)) for k in _RESUME_KEYS if _norm(old[k]) != _norm(getattr(conf, k))}
        if diff:
            raise ValueError(f"cannot resume {last_path}: options differ from the checkpoint's {diff}")
        net.load_state_dict(ckpt["state_dict"])
        opt.load_state_dict(ckpt["optimizer"])
        step, best, elapsed_before = ckpt["step"], ckpt["best"], ckpt["elapsed_s"]
        log(f"resumed {last_path} at step {step}/{total_steps}")
    csv_log = CsvLog(out / "log.csv", step if resume else None) if main_proc else None

    validator = None
    if main_proc and conf.val_sequence.lower() != "none":
        seq = Path(conf.val_sequence) if conf.val_sequence else shared_data_dir() / "hpatches" / "v_dogman"
        validator = RealValidation(seq, conf.val_top_k)

    def elapsed() -> float:
        return elapsed_before + time.time() - t_start

    def checkpoint_and_validate() -> None:
        nonlocal best
        if main_proc:
            vloss = synthetic_val_loss(net, val_pairs, conf)
            rep_sl, rep_l = validator(net) if validator else (float("nan"), float("nan"))
            score = 0.5 * (rep_sl + rep_l) if validator else -vloss
            csv_log.write(step=step, epoch=f"{step / steps_per_epoch:.3f}", wall_s=f"{elapsed():.1f}", lr=None, loss=None,
                          score_max=None, pos_share=None, val_loss=f"{vloss:.4f}", val_rep_SL=f"{rep_sl:.4f}", val_rep_L=f"{rep_l:.4f}")
            log(f"step {step}: val loss {vloss:.3f}, {('rep_SL %.4f rep_L %.4f' % (rep_sl, rep_l)) if validator else ''}")
            if score > best["score"]:
                best = {"score": score, "step": step, "val_rep_SL": rep_sl, "val_rep_L": rep_l, "val_loss": vloss}
                atomic_save({"state_dict": net.state_dict(), "model": conf.model, "step": step, "best": best}, best_path)
            if conf.keep_checkpoints:  # for studying model selection afterwards (a few kB each)
                (out / "steps").mkdir(exist_ok=True)
                atomic_save({"state_dict": net.state_dict(), "model": conf.model, "step": step},
                            out / "steps" / f"step_{step:06d}.pt")
            atomic_save({"state_dict": net.state_dict(), "optimizer": opt.state_dict(), "step": step, "best": best,
                         "elapsed_s": elapsed(), "config": asdict(conf)}, last_path)
            write_plot(out / "log.csv", out / "curves.png")
        if world > 1:
            dist.barrier()

    bar = tqdm(total=stop_step, initial=step, desc=f"train {conf.model}", disable=not (conf.progress and main_proc),
               mininterval=5.0, dynamic_ncols=True)
    running: list[float] = []
    smax, spos = 0.0, 0.0
    while step < stop_step:
        epoch, k = divmod(step, steps_per_epoch)
        order = epoch_order(conf.seed, epoch, n_pairs)
        idx = order[k * conf.batch_size : (k + 1) * conf.batch_size]
        idx = idx.reshape(world, -1)[rank]
        src, dst, h = to_views(train_pairs, idx)
        time_fraction = elapsed() / (60.0 * conf.max_minutes) if conf.max_minutes > 0 else 0.0
        lr = learning_rate(conf, step, total_steps, steps_per_epoch, time_fraction)
        for g in opt.param_groups:
            g["lr"] = lr
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=conf.bf16):
            # One forward over both views: BatchNorm statistics then cover the pair.
            stack = response_stack(model, torch.cat([src, dst]), conf.scale_levels if conf.scale_weight > 0 else 1, level_factor)
        stack = stack.float()
        score = stack[:, :1]
        loss, _ = msip_loss(score[: len(idx)], score[len(idx) :], h, conf.msip_sizes, conf.msip_weights, conf.border, conf.temperature)
        if conf.scale_weight > 0:
            loss = loss + conf.scale_weight * scale_selection_loss(stack[: len(idx)], stack[len(idx) :], h, level_factor, border=conf.border)
        if conf.sparsity > 0:
            loss = loss + conf.sparsity * sparsity_loss(score)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        running.append(float(loss.detach()))
        smax = max(smax, float(score.detach().max()))
        spos += float((score.detach() > 0).float().mean()) / conf.log_every
        bar.update(1)
        if step % conf.log_every == 0:
            mean_loss = float(np.mean(running))
            bar.set_postfix(loss=f"{mean_loss:.3f}", lr=f"{lr:.2e}", smax=f"{smax:.3g}", pos=f"{spos:.2f}")
            if main_proc:
                csv_log.write(step=step, epoch=f"{step / steps_per_epoch:.3f}", wall_s=f"{elapsed():.1f}", lr=f"{lr:.3e}",
                              loss=f"{mean_loss:.4f}", score_max=f"{smax:.4g}", pos_share=f"{spos:.4f}",
                              val_loss=None, val_rep_SL=None, val_rep_L=None)
            running, smax, spos = [], 0.0, 0.0
        out_of_time = conf.max_minutes > 0 and elapsed() > 60.0 * conf.max_minutes
        if step % val_every == 0 or step == stop_step or out_of_time:
            checkpoint_and_validate()
        if out_of_time:
            log(f"stopping at step {step}: wall time passed --max-minutes {conf.max_minutes}")
            break
    bar.close()
    summary = {"steps": step, "total_steps": total_steps, "wall_s": elapsed(), "data_s": t_data, "best": best,
               "best_path": str(best_path), "last_path": str(last_path), "world_size": world, "rank": rank}
    if own_group:
        dist.destroy_process_group()
    if main_proc:
        log(f"done: {step} steps in {summary['wall_s']:.0f} s (pairs {t_data:.0f} s); best {best}")
    return summary


def _norm(v: Any) -> Any:
    """Tuples and lists compare equal (a checkpoint's config round-trips tuples as lists)."""
    return list(v) if isinstance(v, (tuple, list)) else v


def export_weights(best_path: str | Path, out_path: str | Path, recipe: dict[str, Any]) -> Path:
    """Write the shipped-weights file ``{"state_dict", "model", "recipe"}`` from a ``best.pt``.

    The recipe goes through JSON (non-JSON values become strings), so the file loads with
    ``torch.load(..., weights_only=True)``."""
    ckpt = torch.load(best_path, map_location="cpu", weights_only=False)
    state = {k: v.clone() for k, v in ckpt["state_dict"].items()}  # clone: no shared storage bloats the file
    recipe = json.loads(json.dumps({**recipe, "best_step": ckpt["step"], "best": ckpt["best"]}, default=str))
    out_path = Path(out_path)
    atomic_save({"state_dict": state, "model": ckpt["model"], "recipe": recipe}, out_path)
    return out_path
