"""Weights files: the package's own trained files or any compatible state dict, and their int8 form."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .model import MODEL_CONFS, KeyNet
from .paths import WEIGHTS_DIR


def shipped_weights_path(model: str) -> Path:
    """The weights file this package ships for ``model`` (``"keynet"`` or ``"tiny"``)."""
    if model not in MODEL_CONFS:
        raise ValueError(f"unknown model {model!r}; choose one of {sorted(MODEL_CONFS)}")
    return WEIGHTS_DIR / f"{model}.pth"


# (dx, dy), level pixels: the detector offset that cancels each shipped network's position bias,
# measured by keynet.eval.calibration.rotation_offset on 60 training photos (docs/training.md).
SHIPPED_OFFSETS: dict[str, tuple[float, float]] = {"keynet": (0.31, 0.61), "tiny": (-0.01, -0.58)}


def parse_offset(value: str, model: str = "keynet", weights: str | Path | None = None) -> tuple[float, float]:
    """A detector ``offset`` written as ``DX:DY`` (level pixels) or ``shipped`` (``SHIPPED_OFFSETS``
    of ``model``, for the shipped weights only), as (dx, dy)."""
    if value == "shipped":
        if weights is not None or model not in SHIPPED_OFFSETS:
            raise ValueError(f"offset shipped is calibrated for the shipped {sorted(SHIPPED_OFFSETS)} weights only")
        return SHIPPED_OFFSETS[model]
    try:
        dx, dy = (float(v) for v in value.split(":"))
    except ValueError:
        raise ValueError(f"offset must be DX:DY (level pixels) or shipped, got {value!r}") from None
    return dx, dy


INT8_MIN_NUMEL = 4096  # floating weight tensors of at least this many elements are stored as int8 by ``to_int8``


def to_int8(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``state`` with each floating weight tensor (two or more dimensions, output channels first) of at
    least ``INT8_MIN_NUMEL`` elements as int8, and those tensors' scales: one float32 per output
    channel (dim 0), ``max |w| / 127`` of the channel, with weights rounded to the nearest step
    (symmetric, no zero point). ``load_state_dict_file`` undoes it.
    Written by hand: torch's quantisation APIs make quantised modules, not a plain state dict that
    any network loads, and kornia's patch networks have no quantised form."""
    quantised, scales = {}, {}
    for name, w in state.items():
        if not (w.is_floating_point() and w.ndim >= 2 and w.numel() >= INT8_MIN_NUMEL):
            quantised[name] = w
            continue
        scale = (w.detach().float().abs().flatten(1).amax(1) / 127).clamp_min(torch.finfo(torch.float32).tiny)
        quantised[name] = torch.round(w.float() / _per_channel(scale, w.ndim)).clamp(-127, 127).to(torch.int8)
        scales[name] = scale
    return quantised, scales


def _per_channel(scale: torch.Tensor, ndim: int) -> torch.Tensor:
    return scale.reshape(-1, *[1] * (ndim - 1))


def _from_int8(state: dict[str, torch.Tensor], scales: Any, path: Path) -> dict[str, torch.Tensor]:
    if not isinstance(scales, dict) or not all(
        isinstance(s, torch.Tensor) and k in state and state[k].dtype == torch.int8 and s.numel() == len(state[k])
        for k, s in scales.items()
    ):
        raise ValueError(f"{path} has int8_scales that do not fit its int8 tensors")
    return {k: v.float() * _per_channel(scales[k], v.ndim) if k in scales else v for k, v in state.items()}


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``path``: a plain state dict, or a dict holding one under ``state_dict``
    (the layout of keynet's own files and of the reference ``keynet_pytorch.pth``), with int8 tensors
    turned back into float32 where the file has ``int8_scales`` (written by ``to_int8``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types, with messages of no use here, for a non-checkpoint
        raise ValueError(f"{path} is not a PyTorch weights file (torch.load cannot read it)") from e
    scales = obj.get("int8_scales") if isinstance(obj, dict) else None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} holds no state dict of tensors")
    return obj if scales is None else _from_int8(obj, scales, path)


def load_model(weights: str | Path | None = None, model: str = "keynet") -> KeyNet:
    """A ``model`` network in eval mode with ``weights`` (a file path; None = the shipped weights)."""
    if weights is None:
        weights = shipped_weights_path(model)
        if not weights.is_file():
            raise FileNotFoundError(
                f"no shipped weights for model {model!r} in this installation ({weights}); "
                "pass weights=PATH (e.g. a file written by `keynet train`)"
            )
    net = KeyNet(MODEL_CONFS[model])
    state = load_state_dict_file(weights)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:  # torch's message spans many lines; name the keys on one
        problems = _state_dict_mismatch(net.state_dict(), state) or " ".join(str(e).split())
        raise ValueError(f"{weights} does not fit the {model!r} architecture: {problems}") from None
    return net.eval()


def _names(keys: list[str], limit: int = 6) -> str:
    shown = ", ".join(keys[:limit])
    return shown if len(keys) <= limit else f"{shown}, ... ({len(keys)} in all)"


def _state_dict_mismatch(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> str:
    """One line naming the keys of ``state`` missing from or unexpected by ``expected`` and those of
    another shape; empty when ``state`` fits."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} ({'x'.join(map(str, state[k].shape))} in the file, {'x'.join(map(str, v.shape))} expected)"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    parts = []
    if missing:
        parts.append(f"missing keys: {_names(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {_names(unexpected)}")
    if shapes:
        parts.append(f"wrong shapes: {_names(shapes)}")
    return "; ".join(parts)
