"""``keynet train-descriptor``: train a HardNet patch descriptor for Key.Net keypoints on synthetic
homography pairs of any photo folder (``keynet.train.descriptor``).

Examples::

    keynet train-descriptor --out runs/descriptor --export keynet/weights/descriptor.pth
    keynet train-descriptor --out runs/descriptor --resume     # continue after a kill
"""

from __future__ import annotations

import argparse
import datetime
from dataclasses import asdict, fields
from pathlib import Path

from keynet.train.descriptor import KEYPOINT_OPTIONS, DescriptorTrainConfig
from keynet.train.synthesis import HOMOGRAPHY_PRESETS

from .common import CLIError, check_training_run, run_provenance

HELP = "train a patch descriptor (HardNet architecture) for Key.Net keypoints on synthetic homography pairs"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = DescriptorTrainConfig()
    a = parser.add_argument
    a("--out", dest="out_dir", default=d.out_dir, help="run folder: patches_*.npz, last.pt, best.pt, log.csv, curves.png (default: %(default)s)")
    a("--images", dest="image_dir", default=d.image_dir, help="folder of training photos (default: <data>/train_images)")
    a("--cache-dir", default=d.cache_dir, help="cache of synthetic image pairs (default: <out>/../pair_cache)")
    a("--num-pairs", type=int, default=d.num_pairs, help="synthetic image pairs for training (default: %(default)s)")
    a("--num-val-pairs", type=int, default=d.num_val_pairs, help="image pairs of the held-out photos (default: %(default)s)")
    a("--crop", type=int, default=d.crop, help="crop side, px (default: %(default)s)")
    a("--preset", choices=sorted(HOMOGRAPHY_PRESETS), default=d.preset, help="homography ranges (default: %(default)s)")
    a("--num-keypoints", type=int, default=d.num_keypoints, help="Key.Net keypoints per crop (default: %(default)s)")
    a("--keypoints", choices=KEYPOINT_OPTIONS, default=d.keypoints,
      help="detect them with the detector's defaults and sub-pixel positions, or with the Extractor's options "
           "(sub-pixel, level_gamma, input_std) (default: %(default)s)")
    a("--positives", choices=["detected", "mapped"], default=d.positives,
      help="positive patch at the other view's own repeating detection, or at the mapped keypoint (default: %(default)s)")
    a("--min-overlap", type=float, default=d.min_overlap,
      help="detected positives: circle IoU with the mapped keypoint (default: %(default)s)")
    a("--border", choices=["square", "circle"], default=d.border,
      help="keep a keypoint if all of its patch (square) or the patch's inscribed circle lies inside both views; "
           "circle keeps more coarse-level keypoints, padding the corners by the edge (default: %(default)s)")
    a("--width", type=float, default=d.width,
      help="channels of kornia's HardNet scaled by this; 0.5 costs about a third of the time per step (default: %(default)s)")
    a("--epochs", type=int, default=d.epochs, help="(default: %(default)s)")
    a("--batch-size", type=int, default=d.batch_size, help="patch pairs per step (default: %(default)s)")
    a("--lr", type=float, default=d.lr, help="Adam learning rate, cosine decay to 1/100 (default: %(default)s)")
    a("--weight-decay", type=float, default=d.weight_decay, help="(default: %(default)s)")
    a("--margin", type=float, default=d.margin, help="triplet margin (default: %(default)s)")
    a("--seed", type=int, default=d.seed, help="seeds pairs, initialisation and data order (default: %(default)s)")
    a("--threads", type=int, default=d.threads, help="torch CPU threads (default: all cores)")
    a("--bf16", action="store_true",
      help="bfloat16 autocast for the network's forward pass: about 1.8x faster on CPUs with AVX512-BF16 or AMX, "
           "may be slower on others")
    a("--patch-jitter", type=float, default=d.patch_jitter,
      help="probability of a random gamma (0.5-2) and of a linear illumination ramp on each training patch (default: %(default)s)")
    a("--blur-prob", type=float, default=d.blur_prob,
      help="probability of a Gaussian blur of a pair's second view (default: %(default)s)")
    a("--blur-sigma", type=float, default=d.blur_sigma,
      help="top of that blur's sigma range, px; it starts at 0.5 (default: %(default)s)")
    a("--val-every", type=int, default=d.val_every, help="steps between validation + checkpoint (default: %(default)s)")
    a("--log-every", type=int, default=d.log_every, help="steps between CSV rows (default: %(default)s)")
    a("--max-steps", type=int, default=d.max_steps, help="stop after this many steps, 0 = all epochs (default: %(default)s)")
    a("--max-minutes", type=float, default=d.max_minutes, help="wall-time budget of the training loop, 0 = none (default: %(default)s)")
    a("--no-progress", dest="progress", action="store_false", help="no progress bars")
    a("--resume", action="store_true", help="continue from <out>/last.pt (same options required)")
    a("--export", default="", help="after training, write the best network with its recipe to this .pth file, "
                                   "in int8 with a float32 scale per output channel (the form the package ships)")
    a("--export-float32", dest="export_int8", action="store_false", help="write --export in float32 (4x larger)")
    a("--overwrite", action="store_true", help="start a new run in an --out folder that holds one, and replace an existing --export file")


def main(args: argparse.Namespace) -> int:
    from keynet.train.descriptor import export_descriptor, train_descriptor

    conf = DescriptorTrainConfig(**{f.name: getattr(args, f.name) for f in fields(DescriptorTrainConfig)})
    check_training_run(conf, args.resume, args.overwrite, args.export)
    run = Path(conf.out_dir)
    if not args.resume:
        for stale in ("last.pt", "best.pt", "log.csv"):
            (run / stale).unlink(missing_ok=True)
    started = datetime.datetime.now(datetime.timezone.utc)
    try:
        summary = train_descriptor(conf, resume=args.resume, progress=args.progress)
    except ValueError as e:
        raise CLIError(str(e)) from None
    if args.export:
        recipe = {
            **run_provenance(),
            "args": asdict(conf),
            "wall_time_s": round((datetime.datetime.now(datetime.timezone.utc) - started).total_seconds(), 1),
            "steps": summary["steps"],
            "patch_pairs": summary["patch_pairs"],
            "best": summary["best"],
        }
        print(f"wrote {export_descriptor(run / 'best.pt', args.export, recipe, args.export_int8)}")
    return 0
