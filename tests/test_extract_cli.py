"""``keynet extract``: folder tree to hloc features.h5, resumable, failures listed, safe against a kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest

from keynet.cli import main

FAST = ["--model", "tiny", "--num-keypoints", "100", "--quiet"]


def make_folder(root: Path, data_dir: Path, count: int) -> list[str]:
    """``count`` small crops of Oxford images under ``root`` (some in a sub-folder); their h5 names."""
    names = []
    seqs = ["bark", "boat", "graf", "wall"]
    for i in range(count):
        img = cv2.imread(str(data_dir / "oxford_affine" / seqs[i % 4] / "img1.png"))
        name = f"{'sub/' if i % 2 else ''}im{i:02d}.png"
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        y, x = 40 * (i % 5), 60 * (i % 3)
        cv2.imwrite(str(root / name), img[y : y + 160, x : x + 200])
        names.append(name)
    return names


def h5_names(path: Path, locking: bool = True) -> set[str]:
    """Image names as hloc lists them (hloc.utils.io.list_h5_names)."""
    names = set()
    with h5py.File(path, "r", locking=locking) as fd:
        fd.visititems(lambda _, obj: names.add(obj.parent.name.strip("/")) if isinstance(obj, h5py.Dataset) else None)
    return names


def test_extract_resume_failures_overwrite(tmp_path: Path, data_dir: Path, capsys) -> None:
    images = tmp_path / "images"
    names = make_folder(images, data_dir, 3)
    (images / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "features.h5"
    assert main(["extract", str(images), "--out", str(out), *FAST]) == 1  # the broken image: exit 1
    err = capsys.readouterr().err
    assert "failed broken.jpg: cannot decode" in err and "3 image(s) written" in err
    assert h5_names(out) == set(names)
    with h5py.File(out, "r") as fd:
        assert "_keynet_partial" not in fd  # the scratch group of unfinished items goes once all are done
        first = fd["sub/im01.png/descriptors"][()]
        assert first.shape[0] == 128 and fd["sub/im01.png/image_size"][()].tolist() == [200, 160]
    (images / "broken.jpg").unlink()
    names += [f"more/{n}" for n in make_folder(images / "more", data_dir, 1)]
    assert main(["extract", str(images), "--out", str(out), *FAST]) == 0  # resumes: only the new image
    assert "1 image(s) written, 3 already there" in capsys.readouterr().err
    assert h5_names(out) == set(names)
    # other settings would mix features in one file: refused in one line
    assert main(["extract", str(images), "--out", str(out), "--descriptor", "rootsift", *FAST]) == 1
    assert "other settings" in capsys.readouterr().err
    assert main(["extract", str(images), "--out", str(out), "--descriptor", "rootsift", "--overwrite", *FAST]) == 0
    assert "4 image(s) written, 0 already there" in capsys.readouterr().err
    with h5py.File(out, "r") as fd:
        assert not np.array_equal(fd["sub/im01.png/descriptors"][()], first)  # RootSIFT now


def test_extract_offset_shipped_gives_the_extractors_calibrated_keypoints(tmp_path: Path, data_dir: Path, capsys) -> None:
    from keynet import Extractor

    images = tmp_path / "images"
    names = make_folder(images, data_dir, 1)
    out = tmp_path / "features.h5"
    assert main(["extract", str(images), "--out", str(out), "--offset", "shipped", *FAST]) == 0
    ext = Extractor(model="tiny", num_keypoints=100, offset="shipped")
    with h5py.File(out, "r") as fd:
        np.testing.assert_allclose(fd[f"{names[0]}/keypoints"][()], ext.extract(images / names[0])["keypoints"].numpy(),
                                   atol=1e-4)
    # another offset is other settings: refused in one line
    assert main(["extract", str(images), "--out", str(out), *FAST]) == 1
    assert "other settings" in capsys.readouterr().err


def test_extract_input_std_defaults_to_the_extractors_and_turns_off(tmp_path: Path, data_dir: Path, capsys) -> None:
    from keynet import Extractor

    images = tmp_path / "images"
    name = make_folder(images, data_dir, 1)[0]
    for flag, conf, out in (([], {}, "default.h5"), (["--input-std", "0"], {"input_std": 0.0}, "off.h5")):
        assert main(["extract", str(images), "--out", str(tmp_path / out), *flag, *FAST]) == 0
        expected = Extractor(model="tiny", num_keypoints=100, **conf).extract(images / name)["keypoints"].numpy()
        with h5py.File(tmp_path / out, "r") as fd:
            np.testing.assert_allclose(fd[f"{name}/keypoints"][()], expected, atol=1e-4)
    with h5py.File(tmp_path / "default.h5", "r") as a, h5py.File(tmp_path / "off.h5", "r") as b:
        assert a[f"{name}/keypoints"].shape != b[f"{name}/keypoints"].shape or not np.allclose(
            a[f"{name}/keypoints"][()], b[f"{name}/keypoints"][()], atol=1e-3)
    capsys.readouterr()
    with pytest.raises(SystemExit):  # the help's default (a literal: the CLI does not import torch to list options)
        main(["extract", "--help"])
    assert f"(default: {Extractor.default_conf['input_std']}, the Extractor's)" in " ".join(capsys.readouterr().out.split())
    assert main(["extract", str(images), "--out", str(tmp_path / "bad.h5"), "--input-std", "-1", *FAST]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("keynet extract: --input-std must be") and "\n" not in err
    assert not (tmp_path / "bad.h5").exists()


def test_extract_refuses_bad_inputs(tmp_path: Path, capsys) -> None:
    assert main(["extract", str(tmp_path / "missing"), "--out", str(tmp_path / "f.h5")]) == 1
    assert "not a folder" in capsys.readouterr().err
    (tmp_path / "images").mkdir()
    assert main(["extract", str(tmp_path / "images"), "--out", str(tmp_path / "f.h5")]) == 1
    assert "no images found" in capsys.readouterr().err
    cv2.imwrite(str(tmp_path / "images" / "a.png"), np.full((64, 64), 128, np.uint8))
    assert main(["extract", str(tmp_path / "images"), "--out", str(tmp_path / "f.h5"), "--descriptor", "nope"]) == 1
    assert "unknown descriptor" in capsys.readouterr().err


def test_killed_run_leaves_every_finished_image_and_resumes(tmp_path: Path, data_dir: Path) -> None:
    images = tmp_path / "images"
    names = make_folder(images, data_dir, 24)
    out = tmp_path / "features.h5"
    cmd = [sys.executable, "-m", "keynet.cli", "extract", str(images), "--out", str(out), *FAST, "--threads", "1"]
    env = {**os.environ, "HDF5_USE_FILE_LOCKING": "FALSE"}  # so that this test can peek while the run writes
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
            try:
                if len(h5_names(out, locking=False)) >= 3:
                    break
            except (OSError, KeyError, RuntimeError):
                continue  # not created yet, or caught mid-write
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done = h5_names(out)
    assert 3 <= len(done) < len(names), "the run was not killed mid-way"
    with h5py.File(out, "r") as fd:  # every image there is complete and readable
        for name in done:
            if name.startswith("_keynet_partial"):
                continue
            grp = fd[name]
            assert grp["descriptors"].shape == (128, grp["keypoints"].shape[0]) == (128, grp["scores"].shape[0])
        kept = {name: fd[name]["keypoints"][()] for name in done if not name.startswith("_keynet_partial")}
    assert subprocess.run(cmd, env=env, capture_output=True).returncode == 0
    assert h5_names(out) == set(names)  # the leftover partial group is gone, every image is there
    with h5py.File(out, "r") as fd:
        for name, kps in kept.items():
            np.testing.assert_array_equal(fd[name]["keypoints"][()], kps)  # skipped, not redone
