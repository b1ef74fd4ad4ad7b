import numpy as np
import pytest
import torch

from keynet import KeyNetDetector
from keynet.export import OnnxResponse, export_onnx
from keynet.weights import load_model

from .conftest import read_gray


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
