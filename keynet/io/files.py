"""Writing result files so that an interrupted run never leaves a half-written file behind."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np


def write_atomic(path: str | Path, write: Callable[[Path], None], suffix: str | None = None) -> None:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it onto ``path``.

    The rename is atomic on POSIX, so readers see either the old file or the complete new one.
    ``suffix`` (default: ``path``'s own) lets writers that choose a format by extension work.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix or path.suffix)
    except OSError as e:  # name the file asked for, not the temporary one
        raise OSError(e.errno, f"cannot write a file there ({e.strerror})", str(path)) from None
    os.close(fd)
    try:
        write(Path(tmp))
        # mkstemp creates the file private (0600); give it the permissions a plain open() would
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_image(path: str | Path, picture: np.ndarray) -> None:
    """Write a BGR uint8 ``picture`` with OpenCV (the format from ``path``'s suffix), atomically;
    ``OSError`` if OpenCV cannot encode it."""
    import cv2

    def write(tmp: Path) -> None:
        if not cv2.imwrite(str(tmp), picture):
            raise OSError(f"OpenCV could not write {path}")

    write_atomic(path, write)
