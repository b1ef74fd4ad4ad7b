"""ONNX export of the Key.Net response network, and an onnxruntime-backed response for the detector.

The exported graph is ``FastKeyNet`` (BatchNorm folded), with dynamic batch, height and width:
input ``image`` (B,1,H,W) float32 in [0, 1], output ``response`` (B,1,H,W). Detection (pyramid,
non-maxima suppression, top-k) stays in PyTorch: its output size depends on the data.

    from keynet.export import export_onnx, OnnxResponse
    export_onnx(keynet.weights.load_model(), "keynet.onnx")
    det = keynet.KeyNetDetector(network=OnnxResponse("keynet.onnx"))
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .inference import FastKeyNet
from .io.files import write_atomic
from .model import KeyNet

OPSET = 17


def export_onnx(net: KeyNet, path: str | Path) -> Path:
    """Write ``net``'s response network to ``path`` as ONNX; returns the path."""
    fast = FastKeyNet(net).eval()
    example = torch.rand(1, 1, 64, 80)

    def write(tmp: Path) -> None:
        # The TorchScript-based exporter: seconds instead of the dynamo exporter's minute, and the
        # integer pyramid sizes of FastKeyNet keep H and W symbolic in the graph.
        torch.onnx.export(
            fast, (example,), str(tmp), dynamo=False, opset_version=OPSET,
            input_names=["image"], output_names=["response"],
            dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"},
                          "response": {0: "batch", 2: "height", 3: "width"}},
        )

    write_atomic(path, write)
    return Path(path)


class OnnxResponse(nn.Module):
    """A response network run by onnxruntime: (B,1,H,W) float tensor -> (B,1,H,W) tensor (CPU)."""

    def __init__(self, path: str | Path, num_threads: int | None = None) -> None:
        super().__init__()
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise ImportError("the ONNX path needs onnxruntime: pip install 'keynet[onnx]'") from e
        options = ort.SessionOptions()
        options.intra_op_num_threads = num_threads or torch.get_num_threads()
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        # the same limit as the network it was exported from (3 pyramid levels at factor 1.2)
        self.min_input_size = KeyNet().min_input_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (out,) = self.session.run(None, {"image": x.detach().cpu().contiguous().numpy()})
        return torch.from_numpy(out).to(x.device)
