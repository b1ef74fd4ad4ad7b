"""Loading Key.Net weights: the package's own trained files or any compatible state dict."""

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


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``path``: a plain state dict, or a dict holding one under ``state_dict``
    (the layout of keynet's own files and of the reference ``keynet_pytorch.pth``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types, with messages of no use here, for a non-checkpoint
        raise ValueError(f"{path} is not a PyTorch weights file (torch.load cannot read it)") from e
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} holds no state dict of tensors")
    return obj


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
