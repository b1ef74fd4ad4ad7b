"""``keynet eval`` end to end on small synthetic pairs: outputs, keys, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from keynet.cli import eval as cli
from keynet.cli import main as keynet_main


@pytest.fixture(scope="module")
def pairs_file(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two pairs: a 240x320 crop of graf img1 against itself (identity) and against a warp of it."""
    root = tmp_path_factory.mktemp("pairs")
    img = cv2.imread(str(data_dir / "oxford_affine/graf/img1.png"), cv2.IMREAD_GRAYSCALE)[100:340, 200:520]
    H = np.array([[0.95, 0.1, 8.0], [-0.08, 1.02, -5.0], [1e-5, 2e-5, 1.0]])
    cv2.imwrite(str(root / "a.png"), img)
    cv2.imwrite(str(root / "b.png"), cv2.warpPerspective(img, H, (320, 240), flags=cv2.INTER_LINEAR))
    np.savetxt(root / "id.txt", np.eye(3))
    np.savetxt(root / "h.txt", H)
    (root / "pairs.txt").write_text("a.png a.png id.txt\na.png b.png h.txt\n")
    return root / "pairs.txt"


def _run(argv: list[str]) -> int:
    return keynet_main(["eval", *argv])


def test_eval_writes_results_report_plots_deterministically(pairs_file: Path, tmp_path: Path) -> None:
    argv = ["--data", str(pairs_file), "--detector", "sift", "--detector", "orb", "--quiet"]
    assert _run(argv + ["--out", str(tmp_path / "r1")]) == 0
    assert _run(argv + ["--out", str(tmp_path / "r2"), "--no-plots"]) == 0
    r1 = json.loads((tmp_path / "r1/results.json").read_text())
    r2 = json.loads((tmp_path / "r2/results.json").read_text())
    assert r1["results"] == r2["results"]

    res = r1["results"]
    assert list(res) == ["sift", "orb"] and list(res["sift"]) == ["pairs"]
    mean = res["sift"]["pairs"]["mean"]
    for key in ("rep_L", "rep_SL", "matching_score", "mma@1", "mma@3", "mma@5", "mha@3", "num_keypoints"):
        assert 0 <= mean[key] <= (1 if key != "num_keypoints" else 1000), key
    identity, warped = res["sift"]["pairs"]["pairs"]
    assert identity["rep_L"] == identity["rep_SL"] == identity["matching_score"] == 1.0
    assert identity["mma"] == [1.0] * 10 and identity["corner_error"] < 1e-6
    assert 0.3 < warped["rep_L"] < 1.0 and warped["mma"][2] > 0.5 and len(warped["mma"]) == 10

    for rec in res["sift"]["pairs"]["pairs"]:  # flagged exactly when a side keeps fewer than top-k
        assert rec["below_top_k"] == (min(rec["num_a"], rec["num_b"]) < 1000)
    assert mean["num_below_top_k"] == sum(r["below_top_k"] for r in res["sift"]["pairs"]["pairs"]) > 0
    report = (tmp_path / "r1/report.md").read_text()
    assert "## Pairs with fewer than 1000 keypoints in the common area" in report
    assert f"| sift | pairs | {identity['pair']} | {identity['num_a']} | {identity['num_b']} |" in report
    assert "| sift |" in report and "| orb |" in report and "Rep SL" in report
    assert (tmp_path / "r1/mma_pairs.png").stat().st_size > 0 and (tmp_path / "r1/rep_pairs.png").is_file()


def test_eval_registered_in_keynet_cli(pairs_file: Path, tmp_path: Path) -> None:
    keynet_cli = pytest.importorskip("keynet.cli")
    out = tmp_path / "r"
    assert keynet_cli.main(["eval", "--data", str(pairs_file), "--detector", "fast", "--out", str(out), "--quiet", "--no-plots"]) == 0
    assert (out / "results.json").is_file()


def test_eval_reports_bad_inputs(pairs_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["--data", str(pairs_file), "--detector", "surf", "--out", str(tmp_path)]) == 1
    assert "unknown detector" in capsys.readouterr().err
    assert _run(["--data", str(tmp_path / "nope"), "--detector", "sift", "--out", str(tmp_path)]) == 1
    assert "not found" in capsys.readouterr().err


def test_data_split_suffix(tmp_path: Path) -> None:
    assert cli._parse_data("/x/hpatches@view") == ("/x/hpatches", "view")
    assert cli._parse_data("/x/hpatches") == ("/x/hpatches", None)
    odd = tmp_path / "a@b"
    odd.mkdir()
    assert cli._parse_data(str(odd)) == (str(odd), None)  # an existing path is never split


def test_eval_with_hardtfeat_descriptor(pairs_file: Path, tmp_path: Path) -> None:
    argv = ["--data", str(pairs_file), "--detector", "gftt", "--descriptor", "hardtfeat", "--num-keypoints", "300"]
    assert _run(argv + ["--out", str(tmp_path), "--quiet", "--no-plots"]) == 0
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["config"]["descriptor"] == "hardtfeat"
    assert res["results"]["gftt"]["pairs"]["pairs"][0]["matching_score"] == 1.0


def test_eval_with_orientation(pairs_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--data", str(pairs_file), "--detector", "sift", "--orientation", "gradient", "--descriptor", "rootsift",
            "--num-keypoints", "300", "--out", str(tmp_path), "--quiet", "--no-plots"]
    assert _run(argv) == 0
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["config"]["orientation"] == "gradient" and "--orientation gradient" in res["config"]["command"]
    assert res["results"]["sift"]["pairs"]["pairs"][0]["matching_score"] > 0.9  # identity pair: matches itself
    assert _run(argv[:4] + ["--orientation", "sideways", "--out", str(tmp_path / "x")]) == 1
    assert "unknown orientation" in capsys.readouterr().err


def test_eval_relative_pose_on_strecha_cameras(data_dir: Path, tmp_path: Path) -> None:
    # Three fountain views with their ground-truth cameras: keynet eval recognises the layout, and
    # SIFT keypoints with upright SIFT descriptors recover these easy poses within a few degrees.
    src = data_dir / "multiview" / "strecha_fountain_p11"
    (tmp_path / "fountain" / "images").mkdir(parents=True)
    (tmp_path / "fountain" / "gt_dense_cameras").mkdir()
    for n in ("0000.jpg", "0001.jpg", "0002.jpg"):
        (tmp_path / "fountain" / "images" / n).write_bytes((src / "images" / n).read_bytes())
        (tmp_path / "fountain" / "gt_dense_cameras" / f"{n}.camera").write_bytes(
            (src / "gt_dense_cameras" / f"{n}.camera").read_bytes())
    out = tmp_path / "r"
    assert _run(["--data", str(tmp_path / "fountain"), "--detector", "sift", "--num-keypoints", "2000",
                 "--out", str(out), "--quiet"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["results"] == {} and res["config"]["pose_datasets"] == {"fountain": {"pairs": 3}}
    pose = res["pose_results"]["sift"]["fountain"]
    assert [p["pair"] for p in pose["pairs"]] == ["0000.jpg 0001.jpg", "0000.jpg 0002.jpg", "0001.jpg 0002.jpg"]
    assert max(p["error"] for p in pose["pairs"]) < 3.0 and pose["mean"]["auc@20"] > 0.85
    assert "## fountain: relative pose (3 pairs)" in (out / "report.md").read_text()
