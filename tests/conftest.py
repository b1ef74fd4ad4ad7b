from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from keynet.paths import DATA_ENV, reference_weights_path, shared_data_dir


@pytest.fixture(scope="session")
def data_dir() -> Path:
    d = shared_data_dir()
    if not (d / "MANIFEST.md").is_file():
        pytest.skip(f"shared data not found at {d}; set {DATA_ENV}")
    return d


@pytest.fixture(scope="session")
def reference_weights(data_dir) -> Path:
    return reference_weights_path()


def read_gray(path: Path) -> torch.Tensor:
    """A (1,1,H,W) float tensor in [0, 1], read independently of keynet's own loader."""
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    assert img is not None, path
    return torch.from_numpy(img.astype(np.float32) / 255.0)[None, None]


def found_in(ours: dict, theirs: dict, tol: float = 1e-3) -> torch.Tensor:
    """Per keypoint of ``ours`` (a detect() dict): whether ``theirs`` has one with position and
    scale within ``tol``. (N,) bool."""
    a = torch.cat([ours["keypoints"], ours["scales"][:, None]], 1).double()
    b = torch.cat([theirs["keypoints"], theirs["scales"][:, None]], 1).double()
    return (a[:, None] - b[None]).abs().amax(-1).min(1).values < tol


class Identity(nn.Module):
    """A 'network' whose response is the image itself: maxima are where the image peaks."""

    def forward(self, x):
        return x


def pytest_terminal_summary(terminalreporter) -> None:
    """One line saying how many tests the missing shared data skipped, and where it was looked for."""
    reasons = [str(r.longrepr) for r in terminalreporter.stats.get("skipped", [])]
    n = sum("shared data not found" in reason for reason in reasons)
    if n:
        terminalreporter.write_line(
            f"{n} tests skipped: the shared data (real images and reference weights) was not found at "
            f"{shared_data_dir()}; set {DATA_ENV} to its folder to run them (see tests/README.md)", yellow=True)
