"""ONNX export of Key.Net: the response network, and detection up to its global top-k.

``export_onnx`` writes ``FastKeyNet`` (BatchNorm folded), with dynamic batch, height and width:
input ``image`` (B,1,H,W) float32 in [0, 1], output ``response`` (B,1,H,W).

``export_detector_onnx`` writes a ``KeyNetDetector`` up to its top-k: the pyramid, the network on
every level, the strict-maximum test, the border, and the ``num_keypoints`` best maxima over all
levels, as fixed-size outputs ``keypoints`` (B,K,2), ``scales`` (B,K) and ``scores`` (B,K), sorted by
decreasing score; an entry with score 0 is padding (fewer maxima than K). ONNX's TopK breaks ties by
the lower index, which here is the detector's order (level, then row-major), so the graph returns the
detector's keypoints. The number of pyramid levels is fixed in the graph: images must be at least
``min_side`` px per side (stored in the file's metadata; ``OnnxDetector`` checks it).

    from keynet.export import export_onnx, OnnxResponse
    export_onnx(keynet.weights.load_model(), "keynet.onnx")
    det = keynet.KeyNetDetector(network=OnnxResponse("keynet.onnx"))
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .detector import KeyNetDetector, strict_maxima
from .inference import FastKeyNet, downsampled_side
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


def _session(path: str | Path, num_threads: int | None):
    """An onnxruntime CPU session on ``num_threads`` threads (default: as many as torch uses)."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ImportError("the ONNX path needs onnxruntime: pip install 'keynet[onnx]'") from e
    options = ort.SessionOptions()
    options.intra_op_num_threads = num_threads or torch.get_num_threads()
    # Idle onnxruntime threads otherwise spin for a while after each run, taking the cores from the
    # PyTorch work that follows (the detector's suppression, the next image): Tiny-Key.Net detection
    # right after an onnxruntime run took 1.8x as long here.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxResponse(nn.Module):
    """A response network run by onnxruntime: (B,1,H,W) float tensor -> (B,1,H,W) tensor (CPU)."""

    def __init__(self, path: str | Path, num_threads: int | None = None) -> None:
        super().__init__()
        self.session = _session(path, num_threads)
        # the same limit as the network it was exported from (3 pyramid levels at factor 1.2)
        self.min_input_size = KeyNet().min_input_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (out,) = self.session.run(None, {"image": x.detach().cpu().contiguous().numpy()})
        return torch.from_numpy(out).to(x.device)


class _DetectionToTopK(nn.Module):
    """``KeyNetDetector`` up to its global top-k in traceable form (see the module docstring)."""

    def __init__(self, det: KeyNetDetector) -> None:
        super().__init__()
        if not isinstance(det.net, FastKeyNet):
            raise TypeError("only a detector with Key.Net's own network can be exported")
        if det.net.dtype != torch.float32:
            # onnxruntime's CPU provider has no bfloat16 convolution
            raise ValueError(f"export needs precision='float32', the detector has {det.conf['precision']!r}")
        self.det = det

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        det, c = self.det, self.det.conf
        scores, xs, ys, scales = [], [], [], []
        for level, fx, fy in det._levels(image):
            score = det.net(level)
            nh, nw = score.shape[-2:]
            keep = det.scorer.keep(score, strict_maxima(score, c["nms_size"]))
            scores.append(torch.where(keep, score * det.scorer.gain(fx, fy), torch.zeros_like(score)).flatten(1))
            ox, oy = c["offset"]
            xs.append(det.scorer.map(torch.arange(nw, dtype=score.dtype) + ox, fx)[None, :].expand(nh, nw).flatten())
            ys.append(det.scorer.map(torch.arange(nh, dtype=score.dtype) + oy, fy)[:, None].expand(nh, nw).flatten())
            scales.append(torch.ones_like(xs[-1]) * det.scorer.scale(fx, fy))  # fx, fy stay symbolic
        top = torch.topk(torch.cat(scores, 1), c["num_keypoints"], dim=1)
        keypoints = torch.stack([torch.cat(xs)[top.indices], torch.cat(ys)[top.indices]], -1)
        return keypoints, torch.cat(scales)[top.indices], top.values


def detector_min_side(det: KeyNetDetector) -> int:
    """Smallest image side for which ``det`` uses all its pyramid levels."""
    side = det.min_image_size
    while True:
        last = side
        for _ in range(det.conf["pyramid_levels"]):
            last = downsampled_side(last, det.conf["scale_factor"])
        if last >= det.min_image_size:
            return side
        side += 1


def export_detector_onnx(det: KeyNetDetector, path: str | Path) -> Path:
    """Write ``det`` up to its top-k to ``path`` as ONNX (see the module docstring); returns the path."""
    import onnx

    if det.conf["subpixel"]:
        raise ValueError("the exported detection graph has no sub-pixel refinement: export a detector with subpixel=False")
    graph = _DetectionToTopK(det).eval()
    min_side = detector_min_side(det)
    example = torch.rand(1, 1, min_side + 17, min_side + 29)

    def write(tmp: Path) -> None:
        with torch.inference_mode(False), torch.no_grad():
            torch.onnx.export(
                graph, (example,), str(tmp), dynamo=False, opset_version=OPSET,
                input_names=["image"], output_names=["keypoints", "scales", "scores"],
                dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"}, "keypoints": {0: "batch"},
                              "scales": {0: "batch"}, "scores": {0: "batch"}},
            )
        model = onnx.load(str(tmp))
        onnx.helper.set_model_props(model, {"min_side": str(min_side), "num_keypoints": str(det.conf["num_keypoints"])})
        onnx.save(model, str(tmp))

    write_atomic(path, write)
    return Path(path)


class OnnxDetector:
    """Detection up to top-k run by onnxruntime from ``export_detector_onnx``'s file.

    ``detect(batch)`` takes a (B,1,H,W) float tensor in [0, 1] and returns, like
    ``KeyNetDetector.detect``, a list of B dicts of ``keypoints`` (N,2), ``scales`` (N,) and
    ``scores`` (N,), the padding removed.
    """

    def __init__(self, path: str | Path, num_threads: int | None = None) -> None:
        self.session = _session(path, num_threads)
        self.min_side = int(self.session.get_modelmeta().custom_metadata_map["min_side"])

    def detect(self, batch: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        if batch.ndim != 4 or batch.shape[1] != 1:
            raise ValueError(f"expected a (B,1,H,W) tensor, got {tuple(batch.shape)}")
        if min(batch.shape[-2:]) < self.min_side:
            raise ValueError(f"image is {batch.shape[-1]}x{batch.shape[-2]} px; this exported detector "
                             f"needs at least {self.min_side} px per side")
        keypoints, scales, scores = self.session.run(None, {"image": batch.detach().cpu().float().contiguous().numpy()})
        out = []
        for k, sc, s in zip(keypoints, scales, scores):
            valid = s > 0
            out.append({"keypoints": torch.from_numpy(k[valid]), "scales": torch.from_numpy(sc[valid]),
                        "scores": torch.from_numpy(s[valid])})
        return out
