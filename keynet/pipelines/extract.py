"""Local features of every image of a folder tree into one hloc ``features.h5`` (``keynet extract``).

Resumable: images the file already holds are skipped, and each finished image is flushed, so a run
that is killed leaves a readable file with every image finished before the kill
(``keynet.io.hloc.FeatureFile``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from keynet.features import Extractor
from keynet.io.hloc import FeatureFile


@dataclass
class ExtractReport:
    """What a run did: images written, already in the file (skipped), and failed with the reason."""

    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


def image_name(path: Path, root: Path) -> str:
    """The h5 name of an image: its path relative to ``root`` with '/' separators (hloc's names)."""
    return path.relative_to(root).as_posix()


def extract_to_h5(
    images: list[Path],
    root: Path,
    out: Path,
    extractor: Extractor,
    settings: dict | None = None,
    progress: bool = True,
) -> ExtractReport:
    """Extract ``images`` (under ``root``) into ``out``, appending to it if it exists.

    ``settings`` describe the extractor and must match those stored in an existing file
    (``ValueError`` otherwise). An image that cannot be read or described is recorded in the
    report's ``failed`` and the run goes on.
    """
    from tqdm import tqdm

    report = ExtractReport()
    with FeatureFile(out, settings) as h5:
        todo = []
        for path in images:
            name = image_name(path, root)
            (report.skipped.append(name) if name in h5 else todo.append((name, path)))
        for name, path in tqdm(todo, desc="extract", unit="img", disable=not progress, file=sys.stderr):
            try:
                feats = extractor.extract(path)
            except (OSError, ValueError) as e:  # ImageError is a ValueError
                report.failed.append((name, str(e)))
                continue
            h5.write(name, feats)
            report.written.append(name)
        h5.record_failures(report.failed, report.written)
    return report
