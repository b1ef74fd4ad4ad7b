"""The training loop on a handful of synthetic photos: loss falls, resume continues the same run,
the CSV/plot/checkpoints are written, the CLI exports weights, and a DDP step with 2 processes
averages their gradients."""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from keynet.detector import KeyNetDetector, _Pyramid
from keynet.model import build_model
from keynet.cli import train as cli
from keynet.train.loop import TrainConfig, epoch_order, init_weights, learning_rate, response_stack, to_views, train
from keynet.train.loss import msip_loss
from keynet.train.synthesis import HOMOGRAPHY_PRESETS, JitterConfig, PairConfig, load_or_generate
from keynet.weights import load_model, load_state_dict_file

sys.path.insert(0, str(Path(__file__).parent))
from test_train_synthesis import write_photos  # noqa: E402


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_photos(tmp_path_factory.mktemp("photos"), 8, 100, 160, 200)


def small_conf(image_dir: Path, out: Path, **kw) -> TrainConfig:
    base = TrainConfig(out_dir=str(out), model="keynet", image_dir=str(image_dir), cache_dir=str(out.parent / "cache"),
                       num_pairs=8, num_val_pairs=2, crop=64, val_crop=64, epochs=12, batch_size=4, lr=3e-3,
                       val_every=6, val_sequence="none", log_every=2, threads=2, progress=False, seed=1,
                       max_minutes=0.0)
    return replace(base, **kw)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_loss_falls_and_files_are_written(image_dir: Path, tmp_path: Path):
    conf = small_conf(image_dir, tmp_path / "run", keep_checkpoints=True)
    summary = train(conf, log=lambda s: None)
    assert summary["steps"] == 24
    rows = [r for r in read_csv(tmp_path / "run" / "log.csv") if r["loss"]]
    losses = [float(r["loss"]) for r in rows]
    # Rows average 2 steps = one pass over the same 8 pairs: a fair comparison between rows.
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses
    for name in ("last.pt", "best.pt", "log.csv", "curves.png"):
        assert (tmp_path / "run" / name).is_file()
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.startswith(".")]  # no temporary files left
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=False)
    assert best["best"]["step"] in (6, 12, 18, 24)
    kept = sorted(p.name for p in (tmp_path / "run" / "steps").iterdir())
    assert kept == [f"step_{k:06d}.pt" for k in (6, 12, 18, 24)]
    same = load_state_dict_file(tmp_path / "run" / "steps" / f"step_{best['best']['step']:06d}.pt")
    assert all(torch.equal(same[k], v) for k, v in best["state_dict"].items())


def test_resume_continues_the_same_run(image_dir: Path, tmp_path: Path):
    full = train(small_conf(image_dir, tmp_path / "full", epochs=4), log=lambda s: None)
    # The same run, killed after its first checkpoint (step 6) and resumed.
    train(small_conf(image_dir, tmp_path / "split", epochs=4, max_steps=6), log=lambda s: None)
    resumed = train(small_conf(image_dir, tmp_path / "split", epochs=4), resume=True, log=lambda s: None)
    assert full["steps"] == resumed["steps"] == 8
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=False)["state_dict"]
    b = torch.load(tmp_path / "split" / "last.pt", weights_only=False)["state_dict"]
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6), k
    steps = [int(r["step"]) for r in read_csv(tmp_path / "split" / "log.csv") if r["loss"]]
    assert steps == sorted(set(steps))  # no duplicated rows after the resume
    with pytest.raises(ValueError, match="options differ"):
        train(small_conf(image_dir, tmp_path / "split", epochs=4, lr=1e-2), resume=True, log=lambda s: None)


def test_sparsity_term_lowers_the_positive_share(image_dir: Path, tmp_path: Path):
    share = {}
    for w in (0.0, 30000.0):
        train(small_conf(image_dir, tmp_path / f"w{w:g}", epochs=4, sparsity=w), log=lambda s: None)
        share[w] = np.mean([float(r["pos_share"]) for r in read_csv(tmp_path / f"w{w:g}" / "log.csv") if r["loss"]])
    assert share[30000.0] < share[0.0] - 0.1, share


def test_a_run_saved_before_an_option_existed_resumes_with_its_default(image_dir: Path, tmp_path: Path):
    train(small_conf(image_dir, tmp_path / "old", epochs=4, max_steps=6), log=lambda s: None)
    last = tmp_path / "old" / "last.pt"
    ckpt = torch.load(last, weights_only=False)
    del ckpt["config"]["sparsity"]
    torch.save(ckpt, last)
    assert train(small_conf(image_dir, tmp_path / "old", epochs=4), resume=True, log=lambda s: None)["steps"] == 8
    with pytest.raises(ValueError, match="options differ"):
        train(small_conf(image_dir, tmp_path / "old", epochs=4, sparsity=1.0), resume=True, log=lambda s: None)


def test_cli_exports_loadable_weights(image_dir: Path, tmp_path: Path):
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    out = tmp_path / "tiny"
    args = parser.parse_args(["--model", "tiny", "--out", str(out), "--images", str(image_dir), "--num-pairs", "8",
                              "--num-val-pairs", "2", "--crop", "64", "--val-crop", "64", "--epochs", "1", "--batch-size", "4",
                              "--val-sequence", "none", "--no-progress", "--export", str(tmp_path / "tiny.pth")])
    assert cli.main(args) == 0
    saved = torch.load(tmp_path / "tiny.pth", weights_only=False)
    assert saved["model"] == "tiny" and saved["recipe"]["seed"] == 0 and saved["recipe"]["args"]["model"] == "tiny"
    assert {"git_commit", "wall_time_s", "command"} <= set(saved["recipe"])
    assert set(load_state_dict_file(tmp_path / "tiny.pth")) == set(build_model("tiny").state_dict())
    load_model(tmp_path / "tiny.pth", "tiny")


def test_learning_rate_schedules():
    c = TrainConfig(lr=1e-3, min_lr_ratio=0.1, lr_decay=0.5, lr_decay_epochs=2)
    assert learning_rate(replace(c, lr_schedule="constant"), 50, 100, 10) == 1e-3
    assert learning_rate(replace(c, lr_schedule="step"), 19, 100, 10) == 1e-3
    assert learning_rate(replace(c, lr_schedule="step"), 20, 100, 10) == pytest.approx(5e-4)
    cos = replace(c, lr_schedule="cosine")
    assert learning_rate(cos, 0, 100, 10) == pytest.approx(1e-3)
    assert learning_rate(cos, 50, 100, 10) == pytest.approx(0.55e-3)
    assert learning_rate(cos, 100, 100, 10) == pytest.approx(1e-4)


def test_ddp_two_processes(image_dir: Path, tmp_path: Path):
    """torchrun with 2 CPU processes (gloo): one step of a batch of 4 pairs, 2 per process, then the
    checkpoint of rank 0 against the same step computed here in one process.

    DDP averages the two processes' gradients; BatchNorm is not synchronised, so each process
    normalises its own 2 pairs and rank 0 keeps its own running statistics. The step here does the
    same: one forward per half of the batch (rank 0's half on the network that is compared), the
    mean of the two losses, one Adam step. Adam's first moment after one step is 0.1 * gradient,
    so the checkpointed optimizer state gives the averaged gradient itself, not only its sign.
    """
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29517",
           "-m", "keynet.cli", "train", "--out", str(out), "--images", str(image_dir), "--num-pairs", "8",
           "--num-val-pairs", "2", "--crop", "64", "--val-crop", "64", "--epochs", "1", "--batch-size", "4",
           "--max-steps", "1", "--max-minutes", "0", "--lr-schedule", "constant",
           "--threads", "1", "--val-sequence", "none", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, cwd=Path(__file__).parents[1], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    ckpt = torch.load(out / "last.pt", weights_only=False)
    assert ckpt["step"] == 1
    assert not any(k.startswith("module.") for k in ckpt["state_dict"])

    conf = TrainConfig(**ckpt["config"])
    pair_conf = PairConfig(num_pairs=conf.num_pairs, crop=conf.crop, homography=HOMOGRAPHY_PRESETS[conf.preset],
                           jitter=JitterConfig(), seed=conf.seed, split="train")
    pairs = load_or_generate(conf.image_dir, pair_conf, conf.resolved_cache_dir(), progress=False)
    halves = epoch_order(conf.seed, 0, conf.num_pairs)[: conf.batch_size].reshape(2, -1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        nets = [build_model(conf.model) for _ in halves]
        for net in nets:
            init_weights(net, conf.seed)
            net.train()
        for net, idx in zip(nets, halves):
            src, dst, h = to_views(pairs, idx)
            score = net(torch.cat([src, dst]))
            loss, _ = msip_loss(score[: len(idx)], score[len(idx) :], h, conf.msip_sizes, conf.msip_weights, conf.border)
            (0.5 * loss).backward()
        grads = [a.grad + b.grad for a, b in zip(nets[0].parameters(), nets[1].parameters())]
        for p, g in zip(nets[0].parameters(), grads):
            p.grad = g
        opt = torch.optim.Adam(nets[0].parameters(), lr=conf.lr, weight_decay=conf.weight_decay)
        opt.step()
    finally:
        torch.set_num_threads(threads)
    first_moments = [ckpt["optimizer"]["state"][i]["exp_avg"] / 0.1 for i in range(len(grads))]
    for got, want in zip(first_moments, grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6 * want.abs().max().item())
    for k, v in nets[0].state_dict().items():
        torch.testing.assert_close(ckpt["state_dict"][k], v, rtol=1e-6, atol=1e-7, msg=k)


def test_resume_with_another_number_of_processes_continues_the_schedule(image_dir: Path, tmp_path: Path):
    """Two steps in one process, then ``--resume`` under torchrun with 2 processes: the run goes on
    from step 3 to the end (4 steps), with the learning rate and the log of an uninterrupted run."""
    kw = dict(epochs=2, batch_size=4, lr_schedule="cosine", log_every=1, val_every=100, threads=1)
    reference = tmp_path / "reference"
    train(small_conf(image_dir, reference, **kw), log=lambda s: None)
    run = tmp_path / "run"
    conf = small_conf(image_dir, run, **kw)
    train(replace(conf, max_steps=2), log=lambda s: None)
    assert torch.load(run / "last.pt", weights_only=False)["step"] == 2
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29518",
           "-m", "keynet.cli", "train", "--resume", "--out", str(run), "--images", str(image_dir),
           "--cache-dir", conf.cache_dir, "--num-pairs", "8", "--num-val-pairs", "2", "--crop", "64",
           "--val-crop", "64", "--epochs", "2", "--batch-size", "4", "--lr", str(conf.lr), "--seed", "1",
           "--log-every", "1", "--val-every", "100", "--max-minutes", "0", "--threads", "1",
           "--val-sequence", "none", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, cwd=Path(__file__).parents[1], env=env, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    ckpt = torch.load(run / "last.pt", weights_only=False)
    assert ckpt["step"] == 4
    rows = [r for r in read_csv(run / "log.csv") if r["loss"]]
    ref_rows = [r for r in read_csv(reference / "log.csv") if r["loss"]]
    assert [int(r["step"]) for r in rows] == [int(r["step"]) for r in ref_rows] == [1, 2, 3, 4]
    assert [r["lr"] for r in rows] == [r["lr"] for r in ref_rows]


def test_response_stack_levels_are_the_detectors_levels():
    net = load_model(None, "keynet")
    det = KeyNetDetector()
    image = torch.rand(1, 1, 96, 120)
    stack = response_stack(net, image, 3, det.conf["scale_factor"])
    assert stack.shape == (1, 3, 96, 120)
    pyramid = _Pyramid(det, image)
    with torch.no_grad():
        for j in range(3):
            level = net(pyramid.level(pyramid.num_up + j))  # the detector's own downsampled level j
            expected = torch.nn.functional.interpolate(level, size=(96, 120), mode="bilinear", align_corners=False)
            assert torch.allclose(stack[:, j : j + 1], expected, atol=1e-5), j


def test_scale_loss_fine_tunes_from_init_weights(image_dir: Path, tmp_path: Path):
    start = tmp_path / "start.pth"
    torch.save(load_model(None, "keynet").state_dict(), start)
    conf = small_conf(image_dir, tmp_path / "ft", epochs=1, max_steps=2, lr=1e-4, init=str(start), scale_weight=1.0, scale_levels=3)
    train(conf, log=lambda s: None)
    tuned = load_state_dict_file(tmp_path / "ft" / "last.pt")
    shipped = load_model(None, "keynet").state_dict()
    weight = "feature_extractor.lb_block.conv0.0.weight"
    change = (tuned[weight] - shipped[weight]).abs().max().item()
    assert 0 < change < 1e-2  # two small Adam steps from the shipped weights, not a fresh initialisation
    with pytest.raises(ValueError, match="options differ"):
        train(replace(conf, scale_weight=0.5, max_steps=3), resume=True, log=lambda s: None)
