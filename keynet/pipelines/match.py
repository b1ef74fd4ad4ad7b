"""Matching image pairs from a features.h5 into a matches.h5 (hloc layouts, ``keynet.io.hloc``).

Resumable: pairs already in the matches file (in either order) are skipped, and each pair is complete
once written. Pairs are grouped by their first image, so that image's distances to all its partners
come from one matrix product (``Matcher.match_many``).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from keynet.io.hloc import FeatureFile, MatchFile
from keynet.matching.matchers import Matcher
from keynet.matching.pairs import Pair


def match_pairs(features_path: str | Path, pairs: Sequence[Pair], matches_path: str | Path,
                matcher: Matcher, progress: bool = True) -> dict[str, int]:
    """Match ``pairs`` of images of ``features_path`` into ``matches_path``.

    Returns counts: ``pairs`` (asked), ``matched`` (done now), ``skipped`` (already in the file),
    ``matches`` (total number of matches written now).
    """
    with FeatureFile(features_path, mode="r") as feats:
        names = set(feats.names())
    missing = sorted({n for p in pairs for n in p} - names)
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise ValueError(f"{features_path} has no features for {missing[0]}{more}, named in the pairs")
    stats = {"pairs": len(pairs), "matched": 0, "skipped": 0, "matches": 0}
    settings = {"matcher": matcher.settings, "features": Path(features_path).name}
    with MatchFile(matches_path, settings) as out, FeatureFile(features_path, mode="r") as feats:
        todo = defaultdict(list)
        for a, b in pairs:
            if (a, b) in out:
                stats["skipped"] += 1
            else:
                todo[a].append(b)
        bar = tqdm(total=sum(map(len, todo.values())), desc="match", unit="pair", disable=not progress)
        for a, partners in todo.items():
            d0 = feats.load(a)["descriptors"]
            others = [feats.load(b)["descriptors"] for b in partners]
            for b, (matches0, scores0) in zip(partners, matcher.match_many(d0, others)):
                out.write(a, b, matches0, scores0)
                stats["matched"] += 1
                stats["matches"] += int((matches0 >= 0).sum())
                bar.update()
        bar.close()
    return stats
