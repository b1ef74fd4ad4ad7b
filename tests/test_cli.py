import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from keynet import KeyNetDetector
from keynet.cli import main


@pytest.fixture
def images(tmp_path, data_dir):
    src = tmp_path / "in"
    src.mkdir()
    img = cv2.imread(str(data_dir / "oxford_affine/boat/img1.png"), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(src / "a.png"), img[:200, :240])
    cv2.imwrite(str(src / "b.jpg"), img[200:400, 300:540])
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a whole jpeg")
    return src


def test_detect_writes_npz_and_viz_and_reports_failures(tmp_path, images, reference_weights, capsys):
    out = tmp_path / "out"
    rc = main(["detect", str(images), "--out", str(out), "--weights", str(reference_weights),
               "--num-keypoints", "100", "--viz"])
    assert rc == 1  # broken.jpg failed, the others were still written
    assert "broken.jpg" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["a.npz", "a.viz.png", "b.npz", "b.viz.png"]
    saved = np.load(out / "a.npz")
    assert {k: saved[k].dtype for k in saved} == {"keypoints": np.float32, "scales": np.float32, "scores": np.float32}
    direct = KeyNetDetector(weights=reference_weights, num_keypoints=100).detect(images / "a.png")
    np.testing.assert_array_equal(saved["keypoints"], direct["keypoints"].numpy())
    assert cv2.imread(str(out / "a.viz.png")).shape == (200 + 24, 240, 3)  # legend line above the image


def test_a_failing_run_keeps_earlier_results(tmp_path, images, reference_weights):
    out = tmp_path / "out"
    assert main(["detect", str(images / "a.png"), "--out", str(out), "--weights", str(reference_weights)]) == 0
    before = (out / "a.npz").read_bytes()
    rc = main(["detect", str(images / "broken.jpg"), str(tmp_path / "missing.png"), "--out", str(out),
               "--weights", str(reference_weights)])
    assert rc == 1
    assert (out / "a.npz").read_bytes() == before
    assert [p.name for p in out.iterdir()] == ["a.npz"]  # no temporary leftovers


def test_bad_weights_file_is_a_clear_error(tmp_path, images, capsys):
    bad = tmp_path / "w.pth"
    bad.write_text("nope")
    assert main(["detect", str(images / "a.png"), "--out", str(tmp_path / "o"), "--weights", str(bad)]) == 1
    assert "PyTorch weights file" in capsys.readouterr().err


def test_console_script_help():
    r = subprocess.run([sys.executable, "-m", "keynet.cli", "detect", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--num-keypoints" in r.stdout


def test_up_levels_sets_the_upsampled_levels(tmp_path, images, reference_weights):
    out = tmp_path / "out"
    for flag, sub in (([], "exact"), (["--up-levels", "0"], "no_up"), (["--up-levels", "2"], "two_up")):
        rc = main(["detect", str(images / "a.png"), "--out", str(out / sub), "--weights", str(reference_weights), *flag])
        assert rc == 0
    exact, no_up, two_up = (np.load(out / f"{sub}/a.npz") for sub in ("exact", "no_up", "two_up"))
    assert exact["scales"].min() == pytest.approx(22 / 2**0.5, rel=0.01)  # the upsampled level's radius
    assert no_up["scales"].min() >= 22 - 1e-4
    assert two_up["scales"].min() == pytest.approx(11, rel=0.01)  # the level at twice the resolution


def test_offset_moves_the_keypoints_and_shipped_needs_the_shipped_weights(tmp_path, images, reference_weights, capsys):
    out = tmp_path / "out"
    for flag, sub in (([], "plain"), (["--offset", "0.5:-0.25"], "moved")):
        assert main(["detect", str(images / "a.png"), "--out", str(out / sub), "--weights", str(reference_weights), *flag]) == 0
    plain, moved = (np.load(out / f"{sub}/a.npz") for sub in ("plain", "moved"))
    # image pixels per level pixel (the offset is in level pixels): radius / 22, the mean of the level's
    # x and y factors, which differ by a fraction of a percent
    f = plain["scales"] / 22.0
    np.testing.assert_allclose(moved["keypoints"], plain["keypoints"] + np.stack([0.5 * f, -0.25 * f], 1), atol=0.01)
    for bad, msg in (("shipped", "weights only"), ("1", "DX:DY")):
        capsys.readouterr()
        assert main(["detect", str(images / "a.png"), "--out", str(out / "bad"), "--weights", str(reference_weights),
                     "--offset", bad]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("keynet detect: --offset") and msg in err and "\n" not in err
    assert not (out / "bad").exists()


def test_input_std_is_the_detectors_option(tmp_path, images, capsys):
    out = tmp_path / "out"
    assert main(["detect", str(images / "a.png"), "--out", str(out), "--input-std", "0.2", "--num-keypoints", "200"]) == 0
    img = cv2.imread(str(images / "a.png"), cv2.IMREAD_GRAYSCALE)
    expected = KeyNetDetector(num_keypoints=200, input_std=0.2).detect(img)
    np.testing.assert_allclose(np.load(out / "a.npz")["keypoints"], expected["keypoints"].numpy(), atol=1e-4)
    for bad in ("-0.5", "nan"):
        capsys.readouterr()
        assert main(["detect", str(images / "a.png"), "--out", str(out / "bad"), "--input-std", bad]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("keynet detect: --input-std must be") and "\n" not in err
    assert not (out / "bad").exists()


def test_export_writes_a_working_onnx_network_and_detector(tmp_path, reference_weights, data_dir):
    from keynet.export import OnnxDetector, OnnxResponse

    net_path, det_path = tmp_path / "net.onnx", tmp_path / "sub" / "det.onnx"
    assert main(["export", str(net_path), "--weights", str(reference_weights)]) == 0
    assert main(["export", str(det_path), "--weights", str(reference_weights), "--detection",
                 "--num-keypoints", "300"]) == 0
    img = torch.from_numpy(cv2.imread(str(data_dir / "oxford_affine/boat/img1.png"), cv2.IMREAD_GRAYSCALE)[:240, :320] / 255.0)
    img = img.float()[None, None]
    ours = KeyNetDetector(weights=reference_weights, num_keypoints=300).detect(img)[0]
    with torch.no_grad():
        response = OnnxResponse(net_path)(img)
    assert response.shape == img.shape
    onnx_out = OnnxDetector(det_path).detect(img)[0]
    assert len(onnx_out["keypoints"]) == len(ours["keypoints"]) == 300
    torch.testing.assert_close(onnx_out["scores"], ours["scores"], rtol=0, atol=1e-5 * ours["scores"].max().item())


def test_export_with_bad_weights_writes_nothing(tmp_path, capsys):
    bad = tmp_path / "w.pth"
    bad.write_text("nope")
    assert main(["export", str(tmp_path / "x.onnx"), "--weights", str(bad)]) == 1
    assert "PyTorch weights file" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize("native", [True, False])
def test_fast_uses_bfloat16_only_where_native(monkeypatch, native):
    import argparse

    from keynet import inference
    from keynet.cli import detect as detect_cli

    monkeypatch.setattr(inference, "native_bfloat16", lambda: native)
    options = lambda **kw: detect_cli.detector_speed_options(
        argparse.Namespace(**{"fast": False, "precision": None, "up_levels": None, **kw}))
    assert options() == {}
    assert options(fast=True) == ({"precision": "bfloat16"} if native else {})
    assert options(fast=True, precision="float32") == {"precision": "float32"}
    assert options(precision="bfloat16") == {"precision": "bfloat16"}
    assert options(fast=True, up_levels=0) == {"up_levels": 0, **({"precision": "bfloat16"} if native else {})}
