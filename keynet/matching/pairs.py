"""Image pairs to match, as ordered ``(name0, name1)`` tuples of image names (paths relative to the
image folder, '/' separators), and hloc's ``pairs.txt`` format: one ``name0 name1`` per line."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

Pair = tuple[str, str]


def exhaustive_pairs(names: Sequence[str]) -> list[Pair]:
    """Every unordered pair once, ``(names[i], names[j])`` with ``i < j``: n (n - 1) / 2 pairs."""
    return [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]


def sequential_pairs(names: Sequence[str], k: int) -> list[Pair]:
    """Each image with the next ``k`` in capture order (the order of ``names``), for sequences."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    return [(a, b) for i, a in enumerate(names) for b in names[i + 1 : i + 1 + k]]


def make_pairs(names: Sequence[str], spec: str) -> list[Pair]:
    """Pairs from ``exhaustive``, ``sequential:K`` (each image with the next K) or a pairs file path."""
    if spec == "exhaustive":
        return exhaustive_pairs(names)
    if spec.startswith("sequential"):
        _, _, k = spec.partition(":")
        return sequential_pairs(names, int(k or 5))
    if not Path(spec).is_file():
        raise ValueError(f"pairs {spec!r}: use exhaustive, sequential:K or an existing pairs file")
    return read_pairs(spec)


def read_pairs(path: str | Path) -> list[Pair]:
    """Pairs from an hloc pairs file: ``name0 name1`` per line (extra columns ignored); blank lines and
    ``#`` comments skipped; a pair listed twice, in either order, and an image paired with itself are
    kept once and dropped respectively."""
    pairs, seen = [], set()
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) < 2:
            raise ValueError(f"{path}:{number}: expected 'name0 name1', got {line!r}")
        a, b = fields[:2]
        if a == b or frozenset((a, b)) in seen:
            continue
        seen.add(frozenset((a, b)))
        pairs.append((a, b))
    return pairs


def write_pairs(path: str | Path, pairs: Iterable[Pair]) -> None:
    """Write ``pairs`` in hloc's format (names must not contain whitespace)."""
    lines = []
    for a, b in pairs:
        if any(c.isspace() for c in a + b):
            raise ValueError(f"image names with whitespace cannot be written to a pairs file: {a!r}, {b!r}")
        lines.append(f"{a} {b}\n")
    Path(path).write_text("".join(lines))
