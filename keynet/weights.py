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
    except Exception as e:  # torch raises several types for a file that is not a checkpoint
        raise ValueError(f"{path} is not a readable PyTorch weights file: {e}") from e
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
    except RuntimeError as e:
        raise ValueError(f"{weights} does not fit the {model!r} architecture: {e}") from None
    return net.eval()
