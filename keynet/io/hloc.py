"""Files in the layouts of hloc (Hierarchical-Localization), so that hloc and keynet read each other's.

# features.h5 (read here; written by the features layer)
One group per image named by its path relative to the image folder: ``keypoints`` (N, 2) (x, y) with
pixel centres at integer coordinates, ``scores`` (N,), ``descriptors`` (D, N) (transposed, as hloc
stores them), ``image_size`` (2,) as (W, H).

# matches.h5
One group per image pair, named by ``names_to_pair(name0, name1)`` (hloc's rule: each name with '/'
replaced by '-', joined by '/', so the pair is a group inside a group), holding ``matches0`` (N0,)
int32, the index in image 1 of the match of keypoint i of image 0 or -1, and ``matching_scores0``
(N0,) float32. Readers look the pair up in both orders and also under hloc's older '_' separator.
A pair is written into a scratch group and moved to its name only when complete, and the file is
flushed after each pair, so a killed run leaves only complete pairs (a resumed run adds the rest).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import numpy as np

# --------------------------------------------------------------------------------------- features.h5


def feature_names(path: str | Path) -> list[str]:
    """Names of the images that have ``keypoints`` in a features.h5, sorted."""
    import h5py

    found = []
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: found.append(name) if isinstance(obj, h5py.Group) and "keypoints" in obj else None)
    return sorted(n for n in found if not n.startswith("_"))


def read_features(f: Any, name: str) -> dict[str, np.ndarray]:
    """From an open features.h5 ``f``: ``keypoints`` (N, 2) float32, ``descriptors`` (N, D) float32
    (transposed back from the file's (D, N)), ``scores`` (N,) and ``image_size`` (W, H)."""
    if name not in f:
        raise KeyError(f"no features for image {name!r} in {f.filename}")
    g = f[name]
    out = {"keypoints": g["keypoints"][()].astype(np.float32), "image_size": g["image_size"][()]}
    out["scores"] = g["scores"][()].astype(np.float32) if "scores" in g else np.ones(len(out["keypoints"]), np.float32)
    if "descriptors" in g:
        out["descriptors"] = np.ascontiguousarray(g["descriptors"][()].T.astype(np.float32))
        if len(out["descriptors"]) != len(out["keypoints"]):
            raise ValueError(f"{f.filename}:{name}: descriptors are {g['descriptors'].shape}, expected (D, N) "
                             f"with N = {len(out['keypoints'])} keypoints")
    return out


# ---------------------------------------------------------------------------------------- matches.h5

_SCRATCH = "_keynet_partial"


def names_to_pair(name0: str, name1: str, separator: str = "/") -> str:
    """hloc's name of the matches group of the pair (``name0``, ``name1``)."""
    return separator.join((name0.replace("/", "-"), name1.replace("/", "-")))


class MatchFile:
    """An hloc ``matches.h5`` (created if missing); a context manager.

    Args:
        path: the h5 file.
        mode: ``"a"`` to append (resumable writing) or ``"r"`` to read.
        settings: for writing, a JSON-serialisable dict of how the matches were made; stored in a new
            file and compared with the stored one otherwise (``ValueError`` if they differ), so a
            resumed run cannot mix matches of different settings.
    """

    def __init__(self, path: str | Path, mode: str = "a", settings: dict[str, Any] | None = None) -> None:
        import h5py

        if mode not in ("a", "r"):
            raise ValueError(f"mode must be 'a' or 'r', got {mode!r}")
        self.path = Path(path)
        self._file = h5py.File(self.path, mode)
        try:
            if mode == "a" and _SCRATCH in self._file:
                del self._file[_SCRATCH]
            if settings is not None:
                self._check_settings(settings)
        except BaseException:
            self._file.close()
            raise

    def _check_settings(self, settings: dict[str, Any]) -> None:
        text = json.dumps(settings, sort_keys=True)
        stored = self._file.attrs.get("keynet_settings")
        if stored is not None and stored != text:
            raise ValueError(f"{self.path} holds matches made with other settings ({stored}); "
                             "choose another file or overwrite it")
        self._file.attrs["keynet_settings"] = text

    def __enter__(self) -> MatchFile:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def find(self, name0: str, name1: str) -> tuple[str, bool] | None:
        """The group holding the pair and whether it is stored reversed (as (name1, name0)), or None."""
        for sep in ("/", "_"):
            for key, reverse in ((names_to_pair(name0, name1, sep), False), (names_to_pair(name1, name0, sep), True)):
                if "matches0" in self._file.get(key, {}):
                    return key, reverse
        return None

    def __contains__(self, pair: tuple[str, str]) -> bool:
        return self.find(*pair) is not None

    def write(self, name0: str, name1: str, matches0: np.ndarray, scores0: np.ndarray) -> None:
        """Store the matches of keypoints of ``name0`` to keypoints of ``name1`` (replacing any)."""
        matches0 = np.asarray(matches0).astype(np.int32).reshape(-1)
        scores0 = np.asarray(scores0).astype(np.float32).reshape(-1)
        if len(matches0) != len(scores0):
            raise ValueError(f"matches0 and scores0 differ in length: {len(matches0)} and {len(scores0)}")
        tmp = self._file.require_group(_SCRATCH).create_group(uuid.uuid4().hex)
        tmp.create_dataset("matches0", data=matches0)
        tmp.create_dataset("matching_scores0", data=scores0)
        key = names_to_pair(name0, name1)
        if key in self._file:
            del self._file[key]
        self._file.require_group(key.rpartition("/")[0])
        self._file.move(tmp.name, key)
        self._file.flush()

    def read(self, name0: str, name1: str) -> tuple[np.ndarray, np.ndarray]:
        """Matches as (M, 2) int64 index pairs (keypoint of ``name0``, keypoint of ``name1``) and their
        (M,) float32 scores, whichever order the pair is stored in (``KeyError`` if absent)."""
        found = self.find(name0, name1)
        if found is None:
            raise KeyError(f"no matches for the pair ({name0}, {name1}) in {self.path}")
        key, reverse = found
        matches0 = self._file[key]["matches0"][()]
        scores0 = self._file[key]["matching_scores0"][()].astype(np.float32)
        idx = np.flatnonzero(matches0 != -1)
        matches = np.stack([idx, matches0[idx]], axis=1).astype(np.int64)
        return (matches[:, ::-1].copy() if reverse else matches), scores0[idx]
