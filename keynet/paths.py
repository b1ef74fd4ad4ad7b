"""Where keynet finds the shared evaluation/training data and its own shipped weights."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
WEIGHTS_DIR = PACKAGE_DIR / "weights"
DATA_ENV = "KEYNET_DATA"


def shared_data_dir() -> Path:
    """The data folder: ``$KEYNET_DATA`` if set, else ``../shared/data`` beside the repository."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env)
    return PACKAGE_DIR.parent.parent / "shared" / "data"


def reference_weights_path() -> Path:
    """The official Key.Net weights (kornia's layout), used as a reference only, never shipped."""
    return shared_data_dir() / "weights" / "keynet_pytorch" / "keynet_pytorch.pth"


def sample_image_path() -> Path:
    """A sample photo that exists on any machine with matplotlib installed (``keynet[eval]``)."""
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError("the sample photo comes with matplotlib: pip install 'keynet[eval]'") from e
    return Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
