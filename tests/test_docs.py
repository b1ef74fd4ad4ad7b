"""The project's documents speak to users: no development-process words, and every speed or
evaluation figure names the CPU it ran on."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "MODEL_CARD.md", ROOT / "tests" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Words about how the project was developed, not about what it does.
FORBIDDEN = re.compile(r"\bsessions?\b|\bhelpers?\b|\bissues?\b|\bthis machine\b|\bthis VM\b|\bthe machine\b",
                       re.IGNORECASE)


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_no_development_process_words(path: Path) -> None:
    hits = [f"{path.name}:{i}: {line.strip()}" for i, line in enumerate(path.read_text().splitlines(), 1)
            if FORBIDDEN.search(line)]
    assert not hits, "\n".join(hits)


def test_the_forbidden_words_are_caught() -> None:
    for line in ("On this session's machine", "an earlier session", "a helper found", "see the issue",
                 "on this machine", "timings on this VM"):
        assert FORBIDDEN.search(line), line
    assert not FORBIDDEN.search("on a 2-core AMD EPYC (Zen 4) VM")


def test_speed_figures_name_a_cpu() -> None:
    for path in DOCS:
        text = path.read_text()
        if re.search(r"\d(\.\d+)? ?(ms|s)\b.*\d\.\d+x|\bspeed-up\b", text):
            assert re.search(r"AMD EPYC|Intel Xeon", text), path.name
