"""Dataset layouts and the built-in HPatches splits (keynet.eval.datasets)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from keynet.eval.datasets import HPATCHES_SPLITS, load_dataset


def test_builtin_splits_match_keynet_splits_json(data_dir: Path) -> None:
    splits = json.loads((data_dir / "hpatches/keynet_protocol/splits.json").read_text())
    for name in ("full", "view", "illum", "view_test", "illum_test"):
        assert sorted(HPATCHES_SPLITS[name]) == sorted(splits[name]["test"]), name
    assert len(HPATCHES_SPLITS["d2net108"]) == 108


def test_oxford_folder_of_sequences(data_dir: Path) -> None:
    ds = load_dataset(data_dir / "oxford_affine")
    assert ds.layout == "oxford" and len(ds.pairs) == 40
    assert ds.sequences == ["bark", "bikes", "boat", "graf", "leuven", "trees", "ubc", "wall"]
    graf = [p for p in ds.pairs if p.name == "graf/1-3"][0]
    assert graf.image_a.name == "img1.png" and graf.image_b.name == "img3.png"
    np.testing.assert_array_equal(graf.H, np.loadtxt(data_dir / "oxford_affine/graf/H1to3p"))


def test_hpatches_single_sequence_and_split(data_dir: Path) -> None:
    ds = load_dataset(data_dir / "hpatches/v_dogman")
    assert ds.layout == "hpatches" and [p.name for p in ds.pairs] == [f"v_dogman/1-{k}" for k in range(2, 7)]
    view = load_dataset(data_dir / "hpatches", split="view")
    assert view.sequences == ["v_dogman"] and len(view.missing) == 58
    illum = load_dataset(data_dir / "hpatches", split="illum")
    assert illum.pairs == [] and len(illum.missing) == 57
    with pytest.raises(ValueError, match="unknown HPatches split"):
        load_dataset(data_dir / "hpatches", split="nope")
    with pytest.raises(ValueError, match="HPatches only"):
        load_dataset(data_dir / "oxford_affine", split="view")


def _write_image(path: Path) -> None:
    cv2.imwrite(str(path), np.zeros((20, 30), np.uint8))


def test_pairs_list(tmp_path: Path) -> None:
    for n in ("a.png", "b.png", "sub/c.png"):
        (tmp_path / n).parent.mkdir(exist_ok=True)
        _write_image(tmp_path / n)
    np.savetxt(tmp_path / "h1.txt", np.array([[1, 0, 2.5], [0, 1, -1], [0, 0, 1]]))
    (tmp_path / "h2.txt").write_text("1 0 0\n0 1 0\n0 0 1\n")
    (tmp_path / "pairs.txt").write_text("# image_a image_b H\na.png b.png h1.txt\n\nb.png sub/c.png h2.txt  # x\n")
    ds = load_dataset(tmp_path / "pairs.txt")
    assert ds.layout == "pairs" and len(ds.pairs) == 2
    assert ds.pairs[0].image_b == tmp_path / "b.png" and ds.pairs[0].H[0, 2] == 2.5
    assert ds.pairs[1].image_b == tmp_path / "sub/c.png"
    (tmp_path / "bad.txt").write_text("a.png b.png\n")
    with pytest.raises(ValueError, match="bad.txt:1"):
        load_dataset(tmp_path / "bad.txt")
    (tmp_path / "missing.txt").write_text("a.png nothere.png h1.txt\n")
    with pytest.raises(FileNotFoundError, match="nothere"):
        load_dataset(tmp_path / "missing.txt")


def test_hpatches_png_layout_and_empty_folder(tmp_path: Path) -> None:
    seq = tmp_path / "v_x"
    seq.mkdir()
    for k in range(1, 7):
        _write_image(seq / f"{k}.png")
    for k in range(2, 7):
        (seq / f"H_1_{k}").write_text("1 0 0\n0 1 0\n0 0 1\n")
    ds = load_dataset(tmp_path)
    assert ds.layout == "hpatches" and len(ds.pairs) == 5
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no HPatches"):
        load_dataset(tmp_path / "empty")
