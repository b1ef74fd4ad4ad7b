"""The ``keynet`` command as a user runs it (a real subprocess): inputs are never written over, and
every expected failure is one line on stderr with exit code 1."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest


def keynet(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "keynet.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


def one_line_error(r: subprocess.CompletedProcess, *words: str) -> None:
    """Exit code 1, stderr is exactly one line starting with 'keynet ' and holding ``words``."""
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1, r.stderr
    assert len(lines) == 1 and lines[0].startswith("keynet "), r.stderr
    for w in words:
        assert w in lines[0], lines[0]


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    """A textured 8-bit photo in its own folder."""
    rng = np.random.default_rng(0)
    img = cv2.GaussianBlur(rng.integers(0, 256, (160, 200), dtype=np.uint8), (0, 0), 2)
    folder = tmp_path / "photos"
    folder.mkdir()
    cv2.imwrite(str(folder / "img1.png"), img)
    return folder / "img1.png"


def test_detect_viz_into_the_photos_folder_keeps_the_photo(photo: Path) -> None:
    before = md5(photo)
    r = keynet("detect", str(photo), "--out", str(photo.parent), "--viz", "--num-keypoints", "50")
    assert r.returncode == 0, r.stderr
    assert md5(photo) == before
    assert sorted(p.name for p in photo.parent.iterdir()) == ["img1.npz", "img1.png", "img1.viz.png"]
    # Run again: the results exist, so nothing is replaced without --overwrite ...
    one_line_error(keynet("detect", str(photo), "--out", str(photo.parent), "--viz"), "--overwrite")
    # ... and with it, the results are replaced but the photo never is.
    assert keynet("detect", str(photo), "--out", str(photo.parent), "--viz", "--overwrite").returncode == 0
    assert md5(photo) == before


def test_an_output_that_is_an_input_is_refused_even_with_overwrite(photo: Path) -> None:
    # a.png's picture would be a.viz.png, which is itself one of the inputs.
    other = photo.with_name("img1.viz.png")
    other.write_bytes(photo.read_bytes())
    before = md5(other)
    r = keynet("detect", str(photo.parent), "--out", str(photo.parent), "--viz", "--overwrite")
    one_line_error(r, "refusing", "img1.viz.png", "one of the inputs")
    assert md5(other) == before and not photo.with_suffix(".npz").exists()


@pytest.mark.parametrize("out", ["/proc/x.npz", "/proc"])
def test_detect_into_an_unwritable_folder(photo: Path, out: str) -> None:
    one_line_error(keynet("detect", str(photo), "--out", out), out)


def test_detect_out_is_an_existing_file(photo: Path) -> None:
    one_line_error(keynet("detect", str(photo), "--out", str(photo)), "is a file")


def test_detect_in_a_read_only_folder(photo: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    out = photo.parent / "ro"
    out.mkdir(mode=0o555)
    one_line_error(keynet("detect", str(photo), "--out", str(out)), str(out))


def test_export_to_an_unwritable_path_and_over_an_existing_file(tmp_path: Path) -> None:
    one_line_error(keynet("export", "/proc/x.onnx"), "/proc")
    existing = tmp_path / "net.onnx"
    existing.write_text("mine")
    one_line_error(keynet("export", str(existing)), "--overwrite")
    assert existing.read_text() == "mine"


def test_unavailable_and_unknown_devices(photo: Path, tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is available")
    one_line_error(keynet("detect", str(photo), "--out", str(tmp_path / "o"), "--device", "cuda"), "cuda", "--device cpu")
    one_line_error(keynet("detect", str(photo), "--out", str(tmp_path / "o"), "--device", "gpu0"), "gpu0")
    assert not (tmp_path / "o").exists()


def test_weights_that_are_not_weights(photo: Path, tmp_path: Path) -> None:
    bad = tmp_path / "w.pth"
    bad.write_text("not weights")
    one_line_error(keynet("detect", str(photo), "--out", str(tmp_path / "o"), "--weights", str(bad)), str(bad))
    one_line_error(keynet("detect", str(photo), "--out", str(tmp_path / "o"), "--weights", str(tmp_path / "none.pth")),
                   "not found")


def test_train_without_training_photos(tmp_path: Path) -> None:
    r = keynet("train", "--model", "keynet", "--out", str(tmp_path / "runs/keynet"), env={"KEYNET_DATA": str(tmp_path)})
    one_line_error(r, "--images")
    assert not (tmp_path / "runs").exists()


def test_train_refuses_to_start_over_an_existing_run(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(b"a run")
    images = tmp_path / "images"
    images.mkdir()
    one_line_error(keynet("train", "--out", str(run), "--images", str(images)), "--resume", "--overwrite")
    assert (run / "last.pt").read_bytes() == b"a run"


def test_a_truncated_image_is_reported_once_without_opencvs_own_warning(photo: Path, tmp_path: Path) -> None:
    broken = photo.with_name("broken.png")
    broken.write_bytes(photo.read_bytes()[:300])
    r = keynet("detect", str(photo.parent), "--out", str(tmp_path / "o"), "--num-keypoints", "20")
    assert r.returncode == 1
    assert "WARN" not in r.stderr and "libpng" not in r.stderr
    assert [ln for ln in r.stderr.splitlines() if "broken.png" in ln] == [
        f"keynet detect: skipped {broken}: cannot decode {broken}: not an image, or a truncated/corrupt file"
    ]
    assert (tmp_path / "o/img1.npz").is_file()


def test_help_lists_every_subcommand_and_version() -> None:
    from keynet import __version__
    from keynet.cli import SUBCOMMANDS

    r = keynet("--help")
    listed = re.findall(r"^    (\S+)\s", r.stdout, re.M)
    assert r.returncode == 0 and listed == [name.replace("_", "-") for name in SUBCOMMANDS]
    assert keynet("--version").stdout.strip() == f"keynet {__version__}"


@pytest.mark.parametrize("args, words", [
    (["extract", "/nonexistent", "--out", "{tmp}/f.h5"], ["not a folder"]),
    (["extract", "{tmp}", "--out", "{tmp}/f.h5"], ["no images"]),
    (["match", "/nonexistent.h5", "--pairs", "exhaustive", "--out", "{tmp}/m.h5"], ["no such file"]),
    (["match", "{tmp}/a.jpg", "{tmp}/b.jpg"], ["image not found"]),
    (["match", "{tmp}/a.jpg"], ["two image files"]),
    (["colmap", "/nope.h5", "/nope2.h5", "--images", "{tmp}", "--database", "{tmp}/db.db"], ["no such file"]),
    (["sfm", "/nonexistent", "--out", "{tmp}/sfm"], ["not a folder"]),
    (["merge", "/nope.h5", "--out", "{tmp}/merged.h5"], ["no such shard"]),
    (["eval", "--data", "/nonexistent", "--detector", "sift", "--out", "{tmp}/ev"], ["not found"]),
    (["detect", "/nonexistent", "--out", "{tmp}/det"], ["no such file"]),
    (["export", "/proc/x.onnx"], ["/proc/x.onnx"]),
    (["train-descriptor", "--images", "/nonexistent", "--out", "{tmp}/d"], ["--images"]),
])
def test_every_command_says_what_is_wrong_in_one_line(args: list[str], words: list[str], tmp_path: Path) -> None:
    one_line_error(keynet(*[a.format(tmp=tmp_path) for a in args]), *words)


def test_a_missing_optional_package_names_the_extra(tmp_path: Path) -> None:
    # keynet sfm in a process where pycolmap cannot be found: it says which extra to install.
    code = ("import sys, importlib.util; real = importlib.util.find_spec; "
            "importlib.util.find_spec = lambda name, *a: None if name == 'pycolmap' else real(name, *a); "
            "from keynet.cli import main; sys.exit(main(sys.argv[1:]))")
    r = subprocess.run([sys.executable, "-c", code, "sfm", str(tmp_path), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=120)
    one_line_error(r, "pycolmap", "keynet[sfm]")
