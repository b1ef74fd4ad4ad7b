"""Extraction beyond one process: shards and merge, Ray on a local cluster, broken inputs at scale, a
killed run resumed, and a full or read-only disk. Each result is compared, bit for bit, with one
single-process run of the same images."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from keynet.cli import main
from keynet.pipelines.distributed import shard_of, shard_path

from .test_extract_cli import FAST, h5_names, make_folder
from .test_inputs import bomb_png

ONE_THREAD = [*FAST, "--threads", "1"]


def h5_content(path: Path) -> dict[str, np.ndarray]:
    """Every dataset of an h5 file by its full path (keynet's scratch groups excluded)."""
    out = {}
    with h5py.File(path, "r") as fd:
        fd.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return {k: v for k, v in out.items() if not k.startswith("_keynet")}


def assert_same_features(a: Path, b: Path) -> None:
    ca, cb = h5_content(a), h5_content(b)
    assert sorted(ca) == sorted(cb)
    for k in ca:
        np.testing.assert_array_equal(ca[k], cb[k], err_msg=k)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> tuple[Path, Path]:
    """Seven small images and their single-process features.h5 (one thread)."""
    root = tmp_path_factory.mktemp("dist")
    images = root / "images"
    make_folder(images, data_dir, 7)
    single = root / "single.h5"
    assert main(["extract", str(images), "--out", str(single), *ONE_THREAD]) == 0
    return images, single


def test_shards_partition_the_sorted_list() -> None:
    images = [Path(f"im{i}.png") for i in range(10)]
    shards = [shard_of(list(reversed(images)), i, 3) for i in range(3)]  # input order does not matter
    assert sorted(p for s in shards for p in s) == images and sum(map(len, shards)) == 10
    assert shards[1] == [Path("im1.png"), Path("im4.png"), Path("im7.png")]
    assert shard_path(Path("out/features.h5"), 1, 3) == Path("out/features.shard-1-of-3.h5")
    with pytest.raises(ValueError, match="shard index"):
        shard_of(images, 3, 3)


def test_shards_merged_equal_a_single_run(folder: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    images, single = folder
    out = tmp_path / "features.h5"
    for i in range(3):
        assert main(["extract", str(images), "--out", str(out), "--shard-index", str(i), "--num-shards", "3",
                     *ONE_THREAD]) == 0
    shards = [shard_path(out, i, 3) for i in range(3)]
    assert [len(h5_names(s)) for s in shards] == [3, 2, 2]
    assert main(["merge", *map(str, shards), "--out", str(out), "--images", str(images)]) == 0
    assert_same_features(out, single)
    with h5py.File(out) as a, h5py.File(single) as b:
        assert a.attrs["keynet_settings"] == b.attrs["keynet_settings"]
    capsys.readouterr()

    # a shard missing: its images are reported; the same image in two shards: refused
    assert main(["merge", str(shards[0]), str(shards[1]), "--out", str(tmp_path / "part.h5"),
                 "--images", str(images)]) == 1
    err = capsys.readouterr().err
    assert err.count("no shard holds") == 2 and "2 image(s) missing" in err
    before = out.read_bytes()
    copy = tmp_path / "copy.h5"
    copy.write_bytes(shards[0].read_bytes())
    assert main(["merge", str(shards[0]), str(copy), "--out", str(out), "--overwrite"]) == 1
    assert "is in two shards" in capsys.readouterr().err
    assert out.read_bytes() == before  # the refused merge left the existing file as it was


def test_ray_on_a_local_cluster_equals_a_single_run(folder: tuple[Path, Path], tmp_path: Path) -> None:
    pytest.importorskip("ray")
    images, single = folder
    out = tmp_path / "features.h5"
    r = subprocess.run([sys.executable, "-m", "keynet.cli", "extract", str(images), "--out", str(out), "--ray",
                        "--workers", "2", *ONE_THREAD], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "7 image(s) written" in r.stderr
    assert_same_features(out, single)
    assert not out.with_name(out.name + ".parts").exists()  # every actor's shard merged and removed


def test_broken_files_are_recorded_and_never_stop_the_run(folder: tuple[Path, Path], tmp_path: Path) -> None:
    images, single = folder
    mixed = tmp_path / "mixed"
    for p in images.rglob("*.png"):
        (mixed / p.relative_to(images)).parent.mkdir(parents=True, exist_ok=True)
        (mixed / p.relative_to(images)).write_bytes(p.read_bytes())
    good = (images / "im00.png").read_bytes()
    broken = {
        "zero.png": b"",
        "truncated.png": good[: len(good) // 3],
        "corrupt.jpg": b"\xff\xd8\xff\xe0" + os.urandom(2000),
        "notes.png": b"these are field notes, not a picture\n",
        "bomb.png": bomb_png(60000, 60000),
    }
    for name, data in broken.items():
        (mixed / name).write_bytes(data)
    out = tmp_path / "features.h5"
    r = subprocess.run([sys.executable, "-m", "keynet.cli", "extract", str(mixed), "--out", str(out), *ONE_THREAD],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1
    for name in broken:
        assert f"failed {name}: " in r.stderr
    assert "Traceback" not in r.stderr
    assert_same_features(out, single)  # the good images, exactly as without the broken ones
    with h5py.File(out) as fd:
        import json

        failures = json.loads(fd.attrs["keynet_failures"])
    assert sorted(failures) == sorted(broken)
    assert "empty" in failures["zero.png"] and "decompression bomb" in failures["bomb.png"]


def test_a_killed_run_resumed_equals_a_clean_run(folder: tuple[Path, Path], tmp_path: Path, data_dir: Path) -> None:
    images = tmp_path / "images"
    make_folder(images, data_dir, 16)
    clean, out = tmp_path / "clean.h5", tmp_path / "features.h5"
    cmd = [sys.executable, "-m", "keynet.cli", "extract", str(images), *ONE_THREAD]
    assert subprocess.run([*cmd, "--out", str(clean)], capture_output=True).returncode == 0
    env = {**os.environ, "HDF5_USE_FILE_LOCKING": "FALSE"}  # so that the test can look while the run writes
    proc = subprocess.Popen([*cmd, "--out", str(out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
            with contextlib.suppress(OSError, KeyError, RuntimeError):  # not there yet, or caught mid-write
                if len(h5_names(out, locking=False)) >= 4:
                    break
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert 4 <= len(h5_names(out) - {"_keynet_partial"}) < 16, "the run was not killed mid-way"
    assert subprocess.run([*cmd, "--out", str(out)], env=env, capture_output=True).returncode == 0
    assert_same_features(out, clean)


@contextlib.contextmanager
def mounted(path: Path, options: str):
    """A tmpfs (e.g. ``size=300k``) or read-only bind mount at ``path``; the test is skipped where
    mounting is not allowed (not root, or no mount namespace privilege)."""
    path.mkdir(exist_ok=True)
    r = subprocess.run(["mount", *options.split(), str(path)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount here: {r.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _resume_into(out: Path, images: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "keynet.cli", "extract", str(images), "--out", str(out), *ONE_THREAD],
                          capture_output=True, text=True, timeout=300)


def test_a_full_disk_is_one_error_and_the_file_stays_readable(folder: tuple[Path, Path], tmp_path: Path,
                                                              data_dir: Path) -> None:
    images, single = folder
    more = tmp_path / "more"
    make_folder(more, data_dir, 3)
    for p in images.rglob("*.png"):  # the folder again, plus three new images
        (more / "old" / p.relative_to(images)).parent.mkdir(parents=True, exist_ok=True)
        (more / "old" / p.relative_to(images)).write_bytes(p.read_bytes())
    with mounted(tmp_path / "disk", "-t tmpfs -o size=4m tmpfs") as disk:
        out = disk / "features.h5"
        assert _resume_into(out, more / "old").returncode == 0
        before = h5_content(out)
        filler = disk / "filler"
        with open(filler, "wb", buffering=0) as f, contextlib.suppress(OSError):
            while True:  # fill the disk up
                f.write(b"\0" * 4096)
        r = _resume_into(out, more)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 1 and "Traceback" not in r.stderr
        assert "No space left on device" in lines[-1] and str(out) in lines[-1], r.stderr
        filler.unlink()
        after = h5_content(out)  # still readable, with every image it held
        for k, v in before.items():
            np.testing.assert_array_equal(after[k], v)


def test_a_read_only_output_is_one_error_and_the_file_stays_readable(folder: tuple[Path, Path],
                                                                     tmp_path: Path, data_dir: Path) -> None:
    images, single = folder
    src = tmp_path / "rw"
    src.mkdir()
    (src / "features.h5").write_bytes(single.read_bytes())
    more = tmp_path / "more"
    make_folder(more, data_dir, 2)
    with mounted(tmp_path / "ro", f"--bind -o ro {src}") as ro:
        r = _resume_into(ro / "features.h5", more)
        assert r.returncode == 1 and "Traceback" not in r.stderr
        assert "Read-only file system" in r.stderr.strip().splitlines()[-1]
        assert_same_features(ro / "features.h5", single)


def test_merge_combines_matches_files_too(tmp_path: Path) -> None:
    from keynet.io.hloc import MatchFile

    rng = np.random.default_rng(0)
    pairs = [("a.jpg", "b.jpg"), ("a.jpg", "sub/c.jpg"), ("b.jpg", "sub/c.jpg")]
    written = {}
    for i, (n0, n1) in enumerate(pairs):
        m = rng.integers(-1, 50, 40)
        written[(n0, n1)] = m
        with MatchFile(tmp_path / f"m{i % 2}.h5", {"matcher": "smnn"}) as f:
            f.write(n0, n1, m, np.ones(40))
    out = tmp_path / "matches.h5"
    assert main(["merge", str(tmp_path / "m0.h5"), str(tmp_path / "m1.h5"), "--out", str(out)]) == 0
    with MatchFile(out, mode="r") as f:
        assert sorted(f.names()) == ["a.jpg/b.jpg", "a.jpg/sub-c.jpg", "b.jpg/sub-c.jpg"]
        for (n0, n1), m in written.items():
            got, _ = f.read(n0, n1)
            np.testing.assert_array_equal(got[:, 1], m[m >= 0])
