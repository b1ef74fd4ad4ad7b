"""``keynet train``: train Key.Net or Tiny-Key.Net from scratch on synthetic pairs of any photo folder.

Examples::

    keynet train --model keynet --out runs/keynet --export keynet/weights/keynet.pth
    keynet train --model keynet --out runs/keynet --resume          # continue after a kill
    torchrun --nproc-per-node 2 -m keynet.cli train --out runs/ddp   # distributed (gloo on CPU)

Training photos come from ``--images`` (default: ``train_images`` in the shared data folder,
``$KEYNET_DATA`` or ``../shared/data``).
"""

from __future__ import annotations

import argparse
import datetime
from dataclasses import asdict, fields


from keynet.train.loop import TrainConfig
from keynet.train.synthesis import HOMOGRAPHY_PRESETS

from .common import CLIError, check_training_run, run_provenance

HELP = "train Key.Net / Tiny-Key.Net on synthetic homography pairs"
_DEFAULTS = TrainConfig()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``keynet train`` (defaults and their sources: ``TrainConfig``)."""
    d = _DEFAULTS
    a = parser.add_argument
    a("--model", choices=["keynet", "tiny"], default=d.model, help="architecture (default: %(default)s)")
    a("--out", dest="out_dir", default=d.out_dir, help="run folder: last.pt, best.pt, log.csv, curves.png (default: %(default)s)")
    a("--images", dest="image_dir", default=d.image_dir, help="folder of training photos, searched recursively (default: <data>/train_images)")
    a("--cache-dir", default=d.cache_dir, help="where synthetic pairs are cached as .npz (default: <out>/../pair_cache)")
    a("--preset", choices=sorted(HOMOGRAPHY_PRESETS), default=d.preset,
      help="homography ranges: 'paper' (scale 0.5-3.5, +-60 deg, shear 0.8) or 'released' (0.5-2.0, +-45 deg) (default: %(default)s)")
    a("--num-pairs", type=int, default=d.num_pairs, help="training pairs (default: %(default)s)")
    a("--num-val-pairs", type=int, default=d.num_val_pairs, help="synthetic validation pairs, for the logged val loss (default: %(default)s)")
    a("--crop", type=int, default=d.crop, help="training crop side, px (default: %(default)s, the paper's)")
    a("--val-crop", type=int, default=d.val_crop, help="validation crop side, px (default: %(default)s, the released code's)")
    a("--epochs", type=int, default=d.epochs, help="passes over the pairs (default: %(default)s; released code: 25)")
    a("--batch-size", type=int, default=d.batch_size, help="pairs per step, over all processes (default: %(default)s; released code: 32)")
    a("--lr", type=float, default=d.lr, help="Adam learning rate (default: %(default)s, the released code's)")
    a("--lr-schedule", choices=["cosine", "step", "constant"], default=d.lr_schedule, help="(default: %(default)s)")
    a("--min-lr-ratio", type=float, default=d.min_lr_ratio, help="cosine: final lr / lr (default: %(default)s)")
    a("--lr-decay", type=float, default=d.lr_decay, help="step: decay factor (default: %(default)s, released code)")
    a("--lr-decay-epochs", type=float, default=d.lr_decay_epochs, help="step: epochs between decays (default: %(default)s, released code)")
    a("--weight-decay", type=float, default=d.weight_decay, help="Adam weight decay (default: %(default)s)")
    a("--border", type=int, default=d.border, help="ignored frame of the score maps in the loss, px (default: %(default)s)")
    a("--sparsity", type=float, default=d.sparsity, help="weight of a term pulling the response to zero away from keypoints (mean positive response / peak), 0 = M-SIP alone (default: %(default)s)")
    a("--scale-weight", type=float, default=d.scale_weight, help="weight of a cross-entropy over pyramid levels at keypoints, which trains the level a structure fires on to follow its size between the views; 0 = the paper's M-SIP alone (default: %(default)s)")
    a("--scale-levels", type=int, default=d.scale_levels, help="pyramid levels of --scale-weight's loss (default: %(default)s)")
    a("--init", default=d.init, help="weights to start from (fine-tuning) instead of a seeded initialisation")
    a("--temperature", type=float, default=d.temperature, help="softmax temperature of the loss's window weighting; <1 trains the strongest windows more (default: %(default)s)")
    a("--seed", type=int, default=d.seed, help="seeds pairs, initialisation and data order (default: %(default)s)")
    a("--threads", type=int, default=d.threads, help="torch CPU threads per process (default: %(default)s)")
    a("--bf16", action="store_true", help="bfloat16 autocast for the forward pass (CPU); slower on some CPUs")
    a("--val-every", type=int, default=d.val_every, help="steps between validation + checkpoint; 0 = every epoch (default: %(default)s)")
    a("--val-sequence", default=d.val_sequence, help="real sequence for model selection, or 'none' (default: <data>/hpatches/v_dogman)")
    a("--val-top-k", type=int, default=d.val_top_k, help="keypoints per image in the validation repeatability (default: %(default)s)")
    a("--keep-checkpoints", action="store_true", help="also keep the weights of every validated step in <out>/steps/")
    a("--log-every", type=int, default=d.log_every, help="steps between CSV rows (default: %(default)s)")
    a("--max-steps", type=int, default=d.max_steps, help="stop after this many steps (0 = all epochs) (default: %(default)s)")
    a("--max-minutes", type=float, default=d.max_minutes, help="wall-time budget of the whole run (pairs included), 0 = none: the cosine schedule keeps pace with the clock "
      "and the run ends, with a checkpoint, when it is spent (default: %(default)s)")
    a("--no-progress", dest="progress", action="store_false", help="no progress bars")
    a("--resume", action="store_true", help="continue from <out>/last.pt if it exists (same options required)")
    a("--export", default="", help="after training, write the best weights with their recipe to this .pth file")
    a("--overwrite", action="store_true", help="start a new run in an --out folder that holds one (without --resume), "
      "and replace an existing --export file")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)})


def main(args: argparse.Namespace) -> int:

    from keynet.train.loop import export_weights, git_commit, train

    conf = config_from_args(args)
    check_training_run(conf, args.resume, args.overwrite, args.export)
    try:
        summary = train(conf, resume=args.resume)
    except ValueError as e:  # options that do not fit together or the checkpoint being resumed
        raise CLIError(str(e)) from None
    if args.export and summary["rank"] == 0:
        recipe = {
            **run_provenance(),
            "args": asdict(conf),
            "seed": conf.seed,
            "git_commit": git_commit(),
            "wall_time_s": round(summary["wall_s"], 1),
            "pair_synthesis_s": round(summary["data_s"], 1),
            "steps": summary["steps"],
            "world_size": summary["world_size"],
            "finished_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        path = export_weights(summary["best_path"], args.export, recipe)
        print(f"wrote {path}")
    return 0

