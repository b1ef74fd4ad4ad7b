"""Descriptor training (``keynet train-descriptor``): keypoints mapped through the homography,
HardNet's loss on hand-made cases, corresponding patches, a few training steps on synthetic photos
(loss falls, resume continues the same run, the export loads as ``hardnet:PATH``)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from keynet.cli import train_descriptor as cli
from keynet.features.descriptors import make_descriptor
from keynet.train.descriptor import (
    DescriptorTrainConfig,
    _inside,
    detected_positives,
    export_descriptor,
    hardest_triplet_loss,
    map_keypoints,
    pair_config,
    patch_jitter,
    patch_pairs,
    train_descriptor,
)
from keynet.train.synthesis import JitterConfig, generate_pairs, list_images

sys.path.insert(0, str(Path(__file__).parent))
from test_train_loop import read_csv  # noqa: E402
from test_train_synthesis import textured_image, write_photos  # noqa: E402


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_photos(tmp_path_factory.mktemp("photos"), 8, 200, 200, 240)


def small_conf(image_dir: Path, out: Path, **kw) -> DescriptorTrainConfig:
    base = DescriptorTrainConfig(out_dir=str(out), image_dir=str(image_dir), cache_dir=str(out.parent / "cache"),
                                 num_pairs=12, num_val_pairs=4, crop=128, num_keypoints=64, epochs=20, batch_size=32,
                                 lr=1e-3, val_every=5, log_every=1, threads=2, seed=3)
    return replace(base, **kw)


def test_map_keypoints_matches_opencv_and_the_area_change():
    rng = np.random.default_rng(0)
    h = np.array([[1.3, 0.2, 5.0], [-0.1, 0.9, -3.0], [1e-3, -5e-4, 1.0]])
    kps = rng.uniform(0, 100, (20, 2))
    mapped, radii = map_keypoints(h, kps, np.full(20, 4.0))
    np.testing.assert_allclose(mapped, cv2.perspectiveTransform(kps[None], h)[0], atol=1e-9)
    # radius ratio = sqrt of the area ratio of a tiny square, its corners mapped by OpenCV (shoelace area)
    eps = 1e-4
    for (x, y), r in zip(kps, radii):
        square = np.array([[[x, y], [x + eps, y], [x + eps, y + eps], [x, y + eps]]])
        q = cv2.perspectiveTransform(square, h)[0]
        area = 0.5 * abs(np.dot(q[:, 0], np.roll(q[:, 1], -1)) - np.dot(q[:, 1], np.roll(q[:, 0], -1))) / eps**2
        assert r == pytest.approx(4.0 * np.sqrt(area), rel=1e-3)
    # a pure zoom by 2 doubles the radii
    assert np.allclose(map_keypoints(np.diag([2.0, 2.0, 1.0]), kps, np.ones(20))[1], 2.0)


def test_detected_positives_take_the_repeating_detection_one_to_one():
    mapped = np.array([[10.0, 10], [50, 50], [100, 100], [9.8, 10]])
    r = np.full(4, 4.0)
    found = np.array([[10.5, 10], [50, 50], [300, 300]])
    r_found = np.array([4.0, 8.0, 4.0])
    # (10, 10) and (10.5, 10), radius 4: IoU 0.85; (9.8, 10) overlaps the same detection less (0.80)
    # and is left without one; (50, 50) radius 4 in one of radius 8: IoU 16 / 64 = 0.25 < 0.6.
    assert detected_positives(mapped, r, found, r_found, 0.6).tolist() == [0, -1, -1, -1]
    assert detected_positives(mapped, r, found, r_found, 0.2).tolist() == [0, 1, -1, -1]
    assert detected_positives(mapped, r, found[:0], r_found[:0], 0.6).tolist() == [-1] * 4


def test_border_rule_keeps_whole_patches_or_their_inscribed_circles():
    # radius 10 in a 100 px view (pixels 0..99): the rotated square reaches 14.14 px, its circle 10 px
    kps = np.array([[12.0, 50.0], [50.0, 88.0], [50.0, 50.0], [9.0, 50.0]])
    r = np.full(4, 10.0)
    assert _inside(kps, r, 100, "square").tolist() == [False, False, True, False]
    assert _inside(kps, r, 100, "circle").tolist() == [True, True, True, False]
    with pytest.raises(ValueError, match="border must be one of"):
        patch_pairs({"H": np.eye(3)[None]}, 10, border="disc")
    with pytest.raises(ValueError, match="keypoints must be one of subpixel, extractor"):
        patch_pairs({"H": np.eye(3)[None]}, 10, keypoints="sift")


def test_hardest_triplet_loss_by_hand():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # p0 = a0, p1 at 90 degrees from a1 and equal to a0: d(a1,p1) = sqrt(2), hardest negative of a1 is p0 at sqrt(2)
    p = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    # row 0: pos 0, negatives d(a0, p1) = 0 and d(a1, p0) = sqrt(2) -> 0;  max(0, 1 + 0 - 0) = 1
    # row 1: pos sqrt(2), negatives d(a1, p0) = sqrt(2), d(a0, p1) = 0 -> 0; max(0, 1 + sqrt(2) - 0)
    expected = (1.0 + (1.0 + np.sqrt(2.0))) / 2
    assert float(hardest_triplet_loss(a, p, 1.0)) == pytest.approx(expected, abs=1e-5)
    # well separated pairs cost nothing
    eye = torch.eye(3)
    assert float(hardest_triplet_loss(eye, eye, 1.0)) == pytest.approx(0.0, abs=1e-6)


def test_loss_falls_and_resume_continues_the_same_run(image_dir: Path, tmp_path: Path):
    quiet = dict(progress=False, log=lambda s: None)
    full = train_descriptor(small_conf(image_dir, tmp_path / "full", patch_jitter=0.5), **quiet)
    patches = np.load(tmp_path / "full" / "patches_train.npz")
    assert patches["anchor"].shape[1:] == (32, 32) and len(patches["anchor"]) == len(patches["positive"]) >= 32
    # corresponding patches are alike: their correlation beats that of shuffled pairs
    a, p = (patches[k].reshape(len(patches[k]), -1).astype(np.float64) for k in ("anchor", "positive"))
    corr = lambda x, y: np.mean([np.corrcoef(u, v)[0, 1] for u, v in zip(x, y)])  # noqa: E731
    assert corr(a, p) > corr(a, np.roll(p, 7, axis=0)) + 0.2
    losses = [float(r["loss"]) for r in read_csv(tmp_path / "full" / "log.csv") if r["loss"]]
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses
    for name in ("last.pt", "best.pt", "log.csv", "curves.png"):
        assert (tmp_path / "full" / name).is_file()

    # the same run, stopped after step 5 and resumed, ends with the same weights
    steps = full["steps"]
    train_descriptor(small_conf(image_dir, tmp_path / "split", patch_jitter=0.5, max_steps=5), **quiet)
    resumed = train_descriptor(small_conf(image_dir, tmp_path / "split", patch_jitter=0.5), resume=True, **quiet)
    assert resumed["steps"] == steps
    x = torch.load(tmp_path / "full" / "last.pt", weights_only=False)["net"]
    y = torch.load(tmp_path / "split" / "last.pt", weights_only=False)["net"]
    for k in x:
        assert torch.allclose(x[k], y[k], atol=1e-6), k
    with pytest.raises(ValueError, match="other settings"):
        train_descriptor(small_conf(image_dir, tmp_path / "split", lr=1e-2), resume=True, **quiet)


def test_blur_options_blur_the_second_views_and_the_defaults_keep_the_pairs(image_dir: Path, tmp_path: Path):
    assert pair_config(DescriptorTrainConfig(), "train").jitter == JitterConfig()  # the same pairs and cache key
    images = list_images(image_dir)
    sharp = generate_pairs(images, pair_config(small_conf(image_dir, tmp_path, blur_prob=0.0), "train"), progress=False)
    blurred = generate_pairs(images, pair_config(small_conf(image_dir, tmp_path, blur_prob=1.0, blur_sigma=4.0), "train"),
                             progress=False)
    # Each pair draws the same random numbers either way, so only the blur differs, except where the
    # blurred view failed the texture check and the pair moved on to another photo (7 of 12 here).
    same = [i for i in range(len(sharp["src"])) if np.array_equal(sharp["src"][i], blurred["src"][i])]
    assert len(same) >= 3

    def detail(view: np.ndarray) -> float:
        return float(cv2.Laplacian(view.astype(np.float64), cv2.CV_64F).var())

    assert all(detail(blurred["dst"][i]) < detail(sharp["dst"][i]) for i in same)
    with pytest.raises(ValueError, match="blur_sigma"):
        train_descriptor(small_conf(image_dir, tmp_path / "bad", blur_sigma=0.2), progress=False, log=lambda _: None)


def test_a_bad_width_is_refused_before_the_patch_synthesis(image_dir: Path, tmp_path: Path):
    conf = small_conf(image_dir, tmp_path / "run", width=0.0)
    with pytest.raises(ValueError, match="width must be positive, not 0.0"):
        train_descriptor(conf, progress=False, log=lambda _: None)
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()  # no pairs or patches made


def test_patch_jitter_changes_exposure_per_patch_and_p0_is_identity():
    torch.manual_seed(0)
    flat = torch.full((64, 1, 32, 32), 0.5)
    assert torch.equal(patch_jitter(0.0)(flat), flat)
    out = patch_jitter(1.0)(flat)
    assert out.shape == flat.shape and out.min() >= 0.0 and out.max() <= 1.0
    # gamma in [0.5, 2] moves a flat 0.5 patch's mean within [0.25, 0.71] (plus the ramp of at most 0.3)
    means = out.mean(dim=(1, 2, 3))
    assert means.std() > 0.03 and means.min() >= 0.25 - 0.3 and means.max() <= 0.5**0.5 + 0.3
    # the ramp makes every patch vary linearly along x or y: one of its axes stays constant
    rows_const = (out - out[:, :, :1, :]).abs().amax(dim=(1, 2, 3)) < 1e-6
    cols_const = (out - out[:, :, :, :1]).abs().amax(dim=(1, 2, 3)) < 1e-6
    assert bool((rows_const ^ cols_const).all())


def test_bf16_training_follows_the_float32_run(image_dir: Path, tmp_path: Path):
    quiet = dict(progress=False, log=lambda s: None)
    runs = {bf16: train_descriptor(small_conf(image_dir, tmp_path / f"bf16_{bf16}", bf16=bf16, max_steps=8), **quiet)
            for bf16 in (False, True)}
    losses = {bf16: [float(r["loss"]) for r in read_csv(Path(run["out"]) / "log.csv") if r["loss"]]
              for bf16, run in runs.items()}
    # same initialisation and batches: the first loss differs by bfloat16's rounding only, and it falls as well
    assert losses[True][0] == pytest.approx(losses[False][0], rel=0.02)
    assert np.mean(losses[True][-3:]) < 0.9 * np.mean(losses[True][:3]), losses[True]
    assert losses[True] != losses[False]  # autocast did run in bfloat16
    with pytest.raises(ValueError, match="other settings"):  # a float32 run is not resumed in bfloat16
        train_descriptor(small_conf(image_dir, tmp_path / "bf16_False", bf16=True), resume=True, **quiet)


def test_cli_exports_a_descriptor_the_extractor_loads(image_dir: Path, tmp_path: Path):
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    out = tmp_path / "run"
    args = parser.parse_args(["--out", str(out), "--images", str(image_dir), "--cache-dir", str(tmp_path / "cache"),
                              "--num-pairs", "8", "--num-val-pairs", "4", "--crop", "128", "--num-keypoints", "64",
                              "--epochs", "1", "--batch-size", "32", "--no-progress", "--export", str(tmp_path / "d.pth")])
    assert cli.main(args) == 0
    saved = torch.load(tmp_path / "d.pth", weights_only=False)
    assert {"command", "wall_time_s", "args", "config"} <= set(saved["recipe"])
    assert saved["state_dict"]["features.19.weight"].dtype == torch.int8  # the default export
    # the same best.pt in float32: the int8 file describes within a few thousandths of it
    export_descriptor(out / "best.pt", tmp_path / "d32.pth", saved["recipe"], int8=False)
    image = cv2.cvtColor(textured_image(9, 200, 240), cv2.COLOR_BGR2GRAY).astype(np.float32) / 255.0
    kps, radii = np.array([[100.0, 120.0], [50.0, 60.0], [150.0, 90.0]]), np.array([10.0, 8.0, 12.0])
    out_desc, out32 = (make_descriptor(f"hardnet:{tmp_path / name}").compute(image, kps, radii) for name in ("d.pth", "d32.pth"))
    assert out_desc.shape == (3, 128) and np.allclose(np.linalg.norm(out_desc, axis=1), 1.0, atol=1e-5)
    assert 0 < np.abs(out_desc - out32).max() < 0.02
    assert (tmp_path / "d.pth").stat().st_size < 0.3 * (tmp_path / "d32.pth").stat().st_size


def test_shipped_descriptor_matches_a_real_pair(data_dir: Path):
    import kornia.feature as KF

    from keynet.features import Extractor
    from keynet.features.descriptors import SHIPPED_DESCRIPTOR, PatchDescriptor, load_patch_network
    from keynet.io.image import load_image

    seq = data_dir / "oxford_affine" / "boat"  # zoom and rotation
    ext = Extractor(descriptor="keynet", orientation="gradient", num_keypoints=1000)
    a, b = ext.extract(str(seq / "img1.png")), ext.extract(str(seq / "img2.png"))
    _, idx = KF.match_mnn(a["descriptors"], b["descriptors"])
    h = np.loadtxt(seq / "H1to2p")
    projected = cv2.perspectiveTransform(a["keypoints"].numpy()[idx[:, 0]][None].astype(np.float64), h)[0]
    correct = np.linalg.norm(projected - b["keypoints"].numpy()[idx[:, 1]], axis=1) <= 3.0
    assert len(idx) > 300 and correct.mean() > 0.6, (len(idx), correct.mean())
    # the bfloat16 path (where the CPU has it) describes like float32
    image = load_image(seq / "img1.png")
    f32 = PatchDescriptor("f32", load_patch_network(SHIPPED_DESCRIPTOR, "hardnet")[1])
    kps, scales = a["keypoints"].numpy()[:200], a["scales"].numpy()[:200]
    cos = (ext.descriptor.compute(image, kps, scales) * f32.compute(image, kps, scales)).sum(1)
    assert cos.min() > 0.999
