"""Does a validation set rank a run's checkpoints the way the test set does?

Every checkpoint of one or more ``keynet train --keep-checkpoints`` runs (``<run>/steps/step_*.pt``) is
evaluated with ``keynet eval``'s Key.Net protocol (5,000 keypoints per image, top 1,000 in the
common area; ``--val-top-k`` for pairs lists of synthetic crops) on each validation set and on
Oxford Affine (the test set). Printed: each checkpoint's
repeatability (SL / L) on every set, by Oxford group, and the rank (Spearman) and linear (Pearson)
correlations between each validation set's selection score (mean of SL and L, the training
loop's) and Oxford's, over each run's checkpoints and over all of them together (runs of different
recipes spread the test scores further than one run does). Reference weights files can be added
for comparison rows; ``--reuse`` takes the rows of an earlier ``--out`` instead of evaluating again.

    python benchmarks/selection.py runs/keynet_sel [runs/other ...] --val runs/val_wide/pairs.txt \\
        --val ../shared/data/hpatches/v_dogman [--every 2] [--val-top-k 300] [--extra keynet/weights/keynet.pth] \\
        [--reuse earlier.json] [--out rows.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from keynet.eval.datasets import OXFORD_GROUPS, load_dataset
from keynet.eval.detectors import make_detector
from keynet.eval.run import DETECTION_BUDGET, evaluate
from keynet.features.descriptors import make_descriptor
from keynet.paths import shared_data_dir


def ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1, ties given their mean rank (Spearman's convention)."""
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x))
    r[order] = np.arange(len(x))
    for v in np.unique(x):
        tie = x == v
        r[tie] = r[tie].mean()
    return r


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(ranks(np.asarray(a)), ranks(np.asarray(b)))[0, 1])


def scores(pairs: list[dict], sequences: tuple[str, ...] | None = None) -> tuple[float, float]:
    chosen = [p for p in pairs if sequences is None or p["sequence"] in sequences]
    return 100 * float(np.mean([p["rep_SL"] for p in chosen])), 100 * float(np.mean([p["rep_L"] for p in chosen]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", type=Path, nargs="+", help="training run folders with steps/step_*.pt")
    p.add_argument("--val", action="append", required=True, help="a validation set (sequence folder or pairs list); repeatable")
    p.add_argument("--val-top-k", type=int, default=300,
                   help="top-k of pairs-list validation sets (default: %(default)s: 384 px crops hold a quarter of an Oxford "
                        "image's area; with 1,000 keypoints there nearly every keypoint has a neighbour in reach, and "
                        "rep_L saturates near 98%%)")
    p.add_argument("--every", type=int, default=1, help="evaluate every k-th checkpoint (default: all)")
    p.add_argument("--extra", action="append", default=[], help="a weights file to add as a comparison row")
    p.add_argument("--reuse", type=Path, action="append", default=[],
                   help="an earlier --out: its rows are taken as they are, not evaluated again; repeatable")
    p.add_argument("--out", type=Path, default=None, help="write the numbers as JSON here")
    args = p.parse_args()
    torch.set_num_threads(2)
    runs: dict[Path, list[Path]] = {}
    for run in args.runs:
        runs[run] = sorted((run / "steps").glob("step_*.pt"))[args.every - 1 :: args.every]
        if not runs[run]:
            raise SystemExit(f"{run}/steps holds no step_*.pt (train with --keep-checkpoints)")
    known = {row["weights"]: row for path in args.reuse for row in json.loads(path.read_text())}
    model = torch.load(runs[args.runs[0]][0], weights_only=True).get("model", "keynet")
    sets = [load_dataset(v) for v in args.val] + [load_dataset(shared_data_dir() / "oxford_affine")]
    names = [Path(v).parent.name if Path(v).is_file() else Path(v).name for v in args.val] + ["oxford"]
    crops = [ds for ds in sets if ds.layout == "pairs"]  # synthetic crops: --val-top-k
    others = [ds for ds in sets if ds.layout != "pairs"]
    sift = make_descriptor("sift")
    rows = []
    for path in [*(c for cs in runs.values() for c in cs), *map(Path, args.extra)]:
        start = time.perf_counter()
        row = known.get(str(path))
        if row is None:
            det = make_detector(f"keynet:{path},model={model}", DETECTION_BUDGET)
            res = evaluate([det], crops, sift, top_k=args.val_top_k, progress=False)[det.name]
            res.update(evaluate([det], others, sift, progress=False)[det.name])
            row = {"weights": str(path), **{n: scores(res[ds.name]["pairs"]) for n, ds in zip(names, sets)}}
            oxford_pairs = res[sets[-1].name]["pairs"]
            row.update({g: scores(oxford_pairs, seqs) for g, seqs in OXFORD_GROUPS.items()})
        rows.append(row)
        print(path.stem, "  ".join(f"{k} {v[0]:.1f}/{v[1]:.1f}" for k, v in row.items() if k != "weights"),
              "(reused)" if str(path) in known else f"({time.perf_counter() - start:.0f} s)", flush=True)
    by_weights = {r["weights"]: r for r in rows}
    groups = {str(run): [by_weights[str(c)] for c in cs] for run, cs in runs.items()}
    if len(groups) > 1:
        groups["all runs"] = [r for g in list(groups.values()) for r in g]
    for label, steps in groups.items():
        target = np.array([np.mean(r["oxford"]) for r in steps])
        print(f"\ncorrelation with Oxford's (SL + L) / 2 over the {len(steps)} checkpoints of {label}:")
        for n in names[:-1]:
            x = np.array([np.mean(r[n]) for r in steps])
            pick = int(np.argmax(x))
            print(f"  {n}: Spearman {spearman(x, target):+.2f}, Pearson {np.corrcoef(x, target)[0, 1]:+.2f}; "
                  f"selects {steps[pick]['weights']} (Oxford {target[pick]:.1f}; best {target.max():.1f})")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
