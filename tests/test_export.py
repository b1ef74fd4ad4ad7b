import numpy as np
import pytest
import torch

from keynet import KeyNetDetector
from keynet.export import OnnxDetector, OnnxResponse, detector_min_side, export_detector_onnx, export_onnx
from keynet.weights import load_model

from .conftest import found_in, read_gray


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory, reference_weights):
    return export_onnx(load_model(reference_weights), tmp_path_factory.mktemp("onnx") / "keynet.onnx")


def test_onnx_response_equals_torch_at_several_sizes(onnx_path, reference_weights):
    net = load_model(reference_weights)
    ort_net = OnnxResponse(onnx_path)
    g = torch.Generator().manual_seed(0)
    for shape in [(1, 1, 64, 80), (2, 1, 97, 131)]:  # the second is not the export size
        x = torch.rand(shape, generator=g)
        with torch.no_grad():
            a, b = net(x), ort_net(x)
        assert b.shape == a.shape
        assert (a - b).abs().max() <= 1e-5 * a.max()


def test_onnx_detector_gives_the_same_keypoints(onnx_path, reference_weights, data_dir):
    img = read_gray(data_dir / "oxford_affine/bikes/img1.png")[..., :320, :400]
    ours = KeyNetDetector(weights=reference_weights, num_keypoints=500).detect(img)[0]
    ort = KeyNetDetector(network=OnnxResponse(onnx_path), num_keypoints=500).detect(img)[0]
    assert len(ort["keypoints"]) == len(ours["keypoints"]) > 100
    same = np.isclose(ort["keypoints"].numpy(), ours["keypoints"].numpy(), atol=1e-4).all(1)
    assert same.mean() >= 0.99


@pytest.fixture(scope="module", params=[{}, {"level_gamma": 1.0, "offset": (0.31, -0.6), "input_std": 0.2}],
                ids=["paper", "level_gamma_offset_input_std"])
def detector_onnx(tmp_path_factory, request):
    det = KeyNetDetector(num_keypoints=800, **request.param)
    return det, export_detector_onnx(det, tmp_path_factory.mktemp("onnx") / "keynet_detector.onnx")


def test_exported_detection_gives_the_detectors_keypoints(detector_onnx, data_dir):
    det, path = detector_onnx
    ort_det = OnnxDetector(path)
    for crop in [(333, 517), (480, 640)]:  # neither is the size the graph was traced at
        img = read_gray(data_dir / "oxford_affine/bikes/img1.png")[..., : crop[0], : crop[1]]
        ours, onnx_out = det.detect(img)[0], ort_det.detect(img)[0]
        assert len(onnx_out["keypoints"]) == len(ours["keypoints"]) == 800
        # the same keypoints; near-equal scores (1e-6 apart) may come in another order
        assert found_in(ours, onnx_out).all()
        torch.testing.assert_close(onnx_out["scores"], ours["scores"], rtol=0, atol=1e-5 * ours["scores"].max().item())


def test_exported_detection_pads_and_checks_the_size(detector_onnx):
    det, path = detector_onnx
    ort_det = OnnxDetector(path)
    flat = torch.full((1, 1, 200, 220), 0.5)
    flat[..., 100, 110] = 1.0  # a single bright pixel: few maxima, the rest of the 800 is padding
    assert len(ort_det.detect(flat)[0]["keypoints"]) == len(det.detect(flat)[0]["keypoints"]) < 800
    side = detector_min_side(det)
    assert len(det._levels(torch.zeros(1, 1, side, side))) == 6
    assert len(det._levels(torch.zeros(1, 1, side - 1, side - 1))) == 5
    with pytest.raises(ValueError, match=f"at least {side} px"):
        ort_det.detect(torch.rand(1, 1, side - 1, 300))


def test_only_keynets_own_network_exports_detection(tmp_path):
    det = KeyNetDetector(network=torch.nn.Identity())
    with pytest.raises(TypeError, match="Key.Net's own network"):
        export_detector_onnx(det, tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_bfloat16_detection_is_not_exported(tmp_path):
    det = KeyNetDetector(precision="bfloat16")
    with pytest.raises(ValueError, match="precision='float32'"):
        export_detector_onnx(det, tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()
