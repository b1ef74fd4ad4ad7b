"""Aggregation and output of evaluation results: ``results.json``, ``report.md`` and PNG plots.

Per-pair records are plain dicts (see ``keynet.eval.run.evaluate``). Means are over pairs; an
infinite homography corner error (no estimate) is written as ``null`` in JSON.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..io.files import write_atomic
from . import protocols as P

MMA_THRESHOLDS = tuple(range(1, 11))  # pixels, D2-Net's plotted range
HOMOGRAPHY_THRESHOLDS = (1, 3, 5)  # pixels
# Column order of the tables, with headers; values are fractions shown as percentages except counts.
TABLE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("rep_L", "Rep L"),
    ("rep_SL", "Rep SL"),
    ("matching_score", "MS"),
    ("mma@1", "MMA@1"),
    ("mma@3", "MMA@3"),
    ("mma@5", "MMA@5"),
    ("mha@3", "MHA@3"),
    ("auc@3", "AUC@3"),
    ("num_keypoints", "#kp"),
    ("num_matches", "#matches"),
)
_COUNT_KEYS = {"num_keypoints", "num_detected", "num_matches"}


def summarize(pairs: list[dict[str, Any]]) -> dict[str, float]:
    """Means over the per-pair records of one detector on one dataset.

    Keys: ``rep_L``, ``rep_SL``, ``matching_score``, ``mma@t`` for t in 1..10, ``mha@t`` and
    ``auc@t`` for t in 1, 3, 5, ``num_keypoints`` (mean of the two images' kept keypoints),
    ``num_detected``, ``num_matches``, ``num_pairs`` and ``num_below_top_k`` (pairs where a side
    keeps fewer than top-k keypoints in the common area).
    """
    if not pairs:
        return {"num_pairs": 0}
    mean = lambda key: float(np.mean([p[key] for p in pairs]))  # noqa: E731
    out = {k: mean(k) for k in ("rep_L", "rep_SL", "matching_score", "num_keypoints", "num_detected", "num_matches")}
    mma = np.mean([p["mma"] for p in pairs], axis=0)
    out.update({f"mma@{t}": float(v) for t, v in zip(MMA_THRESHOLDS, mma)})
    errors = np.array([np.inf if p["corner_error"] is None else p["corner_error"] for p in pairs])
    acc = P.homography_accuracy(errors, np.array(HOMOGRAPHY_THRESHOLDS))
    out.update({f"mha@{t}": float(a) for t, a in zip(HOMOGRAPHY_THRESHOLDS, acc)})
    out.update({f"auc@{t}": P.error_auc(errors, t) for t in HOMOGRAPHY_THRESHOLDS})
    out["num_pairs"] = len(pairs)
    out["num_below_top_k"] = sum(bool(p.get("below_top_k")) for p in pairs)
    return out


def _json_safe(value: Any) -> Any:
    """Numpy scalars/arrays to Python, infinite floats to ``None``."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_json(path: Path, config: dict[str, Any], results: dict[str, dict[str, dict[str, Any]]],
               pose_results: dict[str, dict[str, dict[str, Any]]] | None = None) -> None:
    """``results[detector][dataset] = {"mean": summarize(...), "pairs": [...]}`` plus the config, and
    ``pose_results`` alike for pose datasets (``keynet.eval.pose.summarize_pose``)."""
    text = json.dumps(_json_safe({"config": config, "results": results, "pose_results": pose_results or {}}),
                      indent=1) + "\n"
    write_atomic(path, lambda tmp: tmp.write_text(text))


def _fmt(key: str, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if key in _COUNT_KEYS else f"{100 * value:.1f}"


def per_sequence(pairs: list[dict[str, Any]], key: str) -> dict[str, float]:
    """Mean of ``key`` per sequence, sequences in sorted order."""
    seqs = sorted({p["sequence"] for p in pairs})
    return {s: float(np.mean([p[key] for p in pairs if p["sequence"] == s])) for s in seqs}


def markdown_report(config: dict[str, Any], results: dict[str, dict[str, dict[str, Any]]], plots: list[str],
                    pose_results: dict[str, dict[str, dict[str, Any]]] | None = None) -> str:
    """The report: one table per dataset (detectors as rows), per-sequence repeatability, relative
    pose AUC for pose datasets, plots."""
    detectors = list(results)
    datasets = list(dict.fromkeys(d for r in results.values() for d in r))
    lines = [
        "# Keypoint detector evaluation",
        "",
        f"Command: `{config['command']}`",
        "",
        "Percentages. Rep L / Rep SL: Key.Net HSequences repeatability (common area, top "
        f"{config['top_k']} keypoints, circle IoU >= 0.6); MS: its matching score (mutual NN of "
        f"{config['descriptor']} descriptors at {config.get('orientation', 'upright')} orientation, < 5 px); MMA@t: D2-Net mean matching accuracy (top "
        f"{config['mma_top_k']}, <= t px); MHA@3 / AUC@3: RANSAC homography corner error <= 3 px and its "
        "AUC. #kp: keypoints kept for repeatability (mean of both images); #matches: mutual NN "
        "matches of the D2-Net protocol. Means over image pairs.",
        "",
    ]
    for ds in datasets:
        n_pairs = next(r[ds]["mean"].get("num_pairs", 0) for r in results.values() if ds in r)
        lines += [f"## {ds} ({n_pairs} pairs)", ""]
        lines.append("| detector | " + " | ".join(h for _, h in TABLE_COLUMNS) + " |")
        lines.append("|---|" + "---:|" * len(TABLE_COLUMNS))
        for det in detectors:
            if ds in results[det]:
                m = results[det][ds]["mean"]
                lines.append(f"| {det} | " + " | ".join(_fmt(k, m.get(k)) for k, _ in TABLE_COLUMNS) + " |")
        lines.append("")
        for key, title in (("rep_L", "Rep L"), ("rep_SL", "Rep SL")):
            seq_tables = {det: per_sequence(results[det][ds]["pairs"], key) for det in detectors if ds in results[det]}
            seqs = sorted({s for t in seq_tables.values() for s in t})
            if len(seqs) < 2:
                continue
            lines += [f"{title} per sequence:", ""]
            lines.append("| detector | " + " | ".join(seqs) + " |")
            lines.append("|---|" + "---:|" * len(seqs))
            for det, table in seq_tables.items():
                lines.append(f"| {det} | " + " | ".join(_fmt(key, table.get(s)) for s in seqs) + " |")
            lines.append("")
    if results:
        lines += _below_top_k_section(results, config["top_k"])
    lines += _pose_section(pose_results or {})
    if plots:
        lines += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    return "\n".join(lines)


def _pose_section(pose_results: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """One table per pose dataset: AUC of the pose error at 5/10/20 degrees, median matches and inliers."""
    lines = []
    for ds in dict.fromkeys(d for r in pose_results.values() for d in r):
        n = next(r[ds]["mean"]["num_pairs"] for r in pose_results.values() if ds in r)
        lines += [f"## {ds}: relative pose ({n} pairs)", "",
                  "AUC (%) of max(rotation, translation-direction error), essential matrix with the known intrinsics.", "",
                  "| detector | AUC@5 | AUC@10 | AUC@20 | matches | inliers |", "|---|---:|---:|---:|---:|---:|"]
        for det, per_ds in pose_results.items():
            if ds in per_ds:
                m = per_ds[ds]["mean"]
                lines.append(f"| {det} | {100 * m['auc@5']:.1f} | {100 * m['auc@10']:.1f} | {100 * m['auc@20']:.1f} "
                             f"| {m['num_matches']:.0f} | {m['num_inliers']:.0f} |")
        lines.append("")
    return lines


def _below_top_k_section(results: dict[str, dict[str, dict[str, Any]]], top_k: int) -> list[str]:
    """A table of the pairs where a side keeps fewer than ``top_k`` keypoints in the common area."""
    rows = [
        f"| {det} | {ds} | {p['pair']} | {p['num_a']} | {p['num_b']} |"
        for det, per_ds in results.items()
        for ds, r in per_ds.items()
        for p in r["pairs"]
        if p.get("below_top_k")
    ]
    if not rows:
        return [f"Every pair kept {top_k} keypoints per image in the common area.", ""]
    return [
        f"## Pairs with fewer than {top_k} keypoints in the common area",
        "",
        "Their repeatability divides by the smaller count, so it is not comparable with full pairs.",
        "",
        "| detector | dataset | pair | kept in a | kept in b |",
        "|---|---|---|---:|---:|",
        *rows,
        "",
    ]


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def plot_names(dataset: str) -> tuple[str, str]:
    """The file names of ``write_plots``'s two pictures of ``dataset``: MMA curves and repeatability bars."""
    return f"mma_{_safe_name(dataset)}.png", f"rep_{_safe_name(dataset)}.png"


def write_plots(out_dir: Path, results: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """Per dataset: ``mma_<dataset>.png`` (MMA vs threshold, one curve per detector) and
    ``rep_<dataset>.png`` (per-sequence Rep L and Rep SL bars). Returns the file names written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    datasets = list(dict.fromkeys(d for r in results.values() for d in r))
    for ds in datasets:
        dets = [d for d in results if ds in results[d]]
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for det in dets:
            m = results[det][ds]["mean"]
            ax.plot(MMA_THRESHOLDS, [100 * m.get(f"mma@{t}", 0.0) for t in MMA_THRESHOLDS], marker="o", label=det)
        ax.set(xlabel="threshold (px)", ylabel="MMA (%)", title=f"MMA - {ds}", ylim=(0, 100), xticks=MMA_THRESHOLDS)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)  # beside the curves
        mma_name, rep_name = plot_names(ds)
        fig.tight_layout()
        fig.savefig(out_dir / mma_name, dpi=100)
        plt.close(fig)
        written.append(mma_name)

        seqs = sorted({p["sequence"] for d in dets for p in results[d][ds]["pairs"]})
        # at most ~14 in wide: more detectors make thinner bars, and the legend sits beside them
        fig, axes = plt.subplots(2, 1, figsize=(min(14.0, 3.0 + 0.25 * len(seqs) * max(1, len(dets))), 6), sharex=True)
        width = 0.8 / max(1, len(dets))
        x = np.arange(len(seqs))
        for ax, key in zip(axes, ("rep_L", "rep_SL")):
            for i, det in enumerate(dets):
                table = per_sequence(results[det][ds]["pairs"], key)
                ax.bar(x + i * width - 0.4 + width / 2, [100 * table.get(s, 0.0) for s in seqs], width, label=det)
            ax.set(ylabel=f"{key} (%)", ylim=(0, 100))
            ax.grid(axis="y", alpha=0.3)
        axes[0].set_title(f"Repeatability per sequence - {ds}")
        axes[0].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        axes[1].set_xticks(x, seqs, rotation=45, ha="right")
        fig.tight_layout()
        fig.savefig(out_dir / rep_name, dpi=100)
        plt.close(fig)
        written.append(rep_name)
    return written
