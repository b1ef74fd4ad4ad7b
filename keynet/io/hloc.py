"""Files in the layouts of hloc (Hierarchical-Localization), so that hloc and keynet read each other's.

``features.h5`` (hloc's ``extract_features.py``): one group per image, named by the image's path
relative to the image folder with '/' separators (sub-folders become nested groups), holding

- ``keypoints`` (N, 2) float32 (x, y), pixel centres at integer coordinates (hloc's convention too:
  it adds 0.5 only when writing COLMAP databases), with the attribute ``uncertainty`` (pixels);
- ``scores`` (N,) float32; ``descriptors`` (D, N) float32 (hloc stores them transposed);
- ``image_size`` (2,) int64 as (W, H);
- keynet's extras, which hloc's readers ignore: ``scales`` (N,) radii in pixels and
  ``orientations`` (N,) degrees (OpenCV's sense, see ``keynet.features``).

``matches.h5`` (hloc's ``match_features.py``): one group per image pair, named by
``names_to_pair(name0, name1)`` (each name with '/' replaced by '-', joined by '/', so a pair is a
group inside a group), holding ``matches0`` (N0,) int32, the index in image 1 of the match of
keypoint i of image 0 or -1, and ``matching_scores0`` (N0,) float32. Readers look a pair up in both
orders and also under hloc's older '_' separator.

Writing is safe against a killed run: an item's datasets are written into a group under ``PARTIAL``
and moved to their name only when complete, then the file is flushed. An item that has its name is
therefore always complete; leftovers under ``PARTIAL`` are removed on the next open for writing. The
file is kept in HDF5's default (earliest) format: "latest" marks the file open-for-write in its
superblock, and a killed run would leave a file that readers refuse until ``h5clear`` is run on it.
The settings that produced a file are kept in its attributes, so that a resumed run cannot mix
results of different settings; images that could not be read are kept there too
(``record_failures``).
"""

from __future__ import annotations

import errno
import json
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from keynet.matching.matchers import matches_to_pairs

PARTIAL = "_keynet_partial"
_REQUIRED = ("keypoints", "scores", "descriptors", "image_size")


class _KeynetH5:
    """An hloc-layout h5 file that keynet writes item by item; a context manager.

    Args:
        path: the h5 file (created if missing when ``mode`` is ``"a"``).
        settings: a JSON-serialisable dict of how the items were made; stored on a new file, and
            compared with the stored one on an existing file (``ValueError`` if they differ).
        mode: ``"a"`` to append (resumable writing) or ``"r"`` to read.
    """

    kind = "items"

    def __init__(self, path: str | Path, settings: dict[str, Any] | None = None, mode: str = "a") -> None:
        import h5py

        if mode not in ("a", "r"):
            raise ValueError(f"mode must be 'a' or 'r', got {mode!r}")
        self.path = Path(path)
        self._file = h5py.File(self.path, mode)
        try:
            if mode == "a" and PARTIAL in self._file:
                del self._file[PARTIAL]
            if settings is not None:
                self._check_settings(settings)
        except BaseException:
            self._file.close()
            raise

    def _check_settings(self, settings: dict[str, Any]) -> None:
        text = json.dumps(settings, sort_keys=True)
        stored = self._file.attrs.get("keynet_settings")
        if (stored is None and self.names()) or (stored is not None and stored != text):
            raise ValueError(f"{self.path} holds {self.kind} made with other settings ({stored or 'not recorded'}); "
                             "choose another file or overwrite it")
        if stored is None:  # a file is written only where something changes
            self._ensure_space(len(text))
            self._file.attrs["keynet_settings"] = text

    def __enter__(self):
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        f = self._file
        if f and f.mode != "r" and PARTIAL in f and len(f[PARTIAL]) == 0:
            del f[PARTIAL]  # the scratch group, empty once every item written is complete
        f.close()

    def names(self) -> list[str]:
        """The items' names (images, or pairs), sorted."""
        return h5_items(self._file)

    def _ensure_space(self, nbytes: int) -> None:
        """Refuse (``OSError`` ENOSPC) to write ``nbytes`` more unless the disk has room for twice that
        and 1 MiB of HDF5 metadata. HDF5 updates a file in place: a write that fails half-way on a
        full disk leaves a file that no reader opens, so keynet checks first and writes nothing."""
        need = 2 * nbytes + (1 << 20)
        free = shutil.disk_usage(self.path.resolve().parent).free
        if free < need:
            raise OSError(errno.ENOSPC, f"No space left on device ({free} bytes free, {need} needed for the next "
                                        "item; the file is unchanged)", str(self.path))

    def _write_datasets(self, name: str, data: dict[str, np.ndarray], attrs: dict[str, dict] | None = None) -> None:
        """Write ``data`` (with each dataset's ``attrs``) into a scratch group, then move it to ``name``
        (replacing it) and flush."""
        self._ensure_space(sum(v.nbytes for v in data.values()))
        tmp = self._file.require_group(PARTIAL).create_group(uuid.uuid4().hex)
        for k, v in data.items():
            tmp.create_dataset(k, data=v)
            tmp[k].attrs.update((attrs or {}).get(k, {}))
        self._move_into_place(tmp.name, name)

    def _move_into_place(self, tmp: str, name: str) -> None:
        if name in self._file:
            del self._file[name]
        parent = name.rpartition("/")[0]
        if parent:
            self._file.require_group(parent)
        self._file.move(tmp, name)
        self._file.flush()

    def copy_from(self, src: Any, name: str) -> None:
        """Copy item ``name`` from another open h5 file ``src``, as ``write`` stores one (into a scratch
        group first, then moved to its name and flushed)."""
        tmp = f"{PARTIAL}/{uuid.uuid4().hex}"
        self._ensure_space(sum(obj.nbytes for obj in src[name].values() if hasattr(obj, "nbytes")))
        self._file.require_group(PARTIAL)
        src.copy(src[name], self._file, name=tmp)
        self._move_into_place(tmp, name)

    def record_failures(self, failed: list[tuple[str, str]], written: list[str]) -> None:
        """Keep the inputs that failed, with the reason, in the file's ``keynet_failures`` attribute (a
        JSON object name -> reason; hloc's readers ignore attributes); inputs now written leave it."""
        failures = self.failures()
        for name in written:
            failures.pop(name, None)
        failures.update(dict(failed))
        text = json.dumps(failures, sort_keys=True)
        if text != self._file.attrs.get("keynet_failures", "{}"):
            self._ensure_space(len(text))
            self._file.attrs["keynet_failures"] = text
            self._file.flush()

    def failures(self) -> dict[str, str]:
        """Inputs that failed in the runs that wrote this file, and why (``record_failures``)."""
        return json.loads(self._file.attrs.get("keynet_failures", "{}"))


class FeatureFile(_KeynetH5):
    """hloc's ``features.h5`` (module docstring), opened for appending or reading."""

    kind = "features"

    def __contains__(self, name: str) -> bool:
        """Whether the file holds the complete features of image ``name``."""
        import h5py

        obj = self._file.get(name)
        return isinstance(obj, h5py.Group) and all(isinstance(obj.get(k), h5py.Dataset) for k in _REQUIRED)

    def write(self, name: str, features: dict[str, Any]) -> None:
        """Store the features of image ``name`` (a relative path with '/'): a dict with ``keypoints``
        (N, 2), ``scores`` (N,), ``descriptors`` (N, D), ``image_size`` (W, H), and optionally
        ``scales`` and ``orientations`` (N,); tensors or arrays. Replaces features of that name."""
        arrays = {k: np.asarray(v.cpu() if hasattr(v, "cpu") else v) for k, v in features.items()}
        missing = [k for k in _REQUIRED if k not in arrays]
        if missing:
            raise ValueError(f"features of {name} lack {missing}")
        n = len(arrays["keypoints"])
        desc = arrays["descriptors"].astype(np.float32)
        if desc.ndim != 2 or desc.shape[0] != n:
            raise ValueError(f"descriptors of {name} must be (N, D) with N = {n} keypoints, got {desc.shape}")
        data = {
            "keypoints": arrays["keypoints"].astype(np.float32).reshape(n, 2),
            "scores": arrays["scores"].astype(np.float32).reshape(n),
            "descriptors": np.ascontiguousarray(desc.T),
            "image_size": np.rint(arrays["image_size"]).astype(np.int64).reshape(2),
        }
        for k in ("scales", "orientations"):
            if k in arrays:
                data[k] = arrays[k].astype(np.float32).reshape(n)
        self._write_datasets(name, data, {"keypoints": {"uncertainty": 1.0}})  # hloc's detection noise, px

    def read(self, name: str) -> dict[str, np.ndarray]:
        """The datasets of image ``name`` as stored (``descriptors`` is (D, N))."""
        return {k: v[()] for k, v in self._file[name].items()}

    def load(self, name: str) -> dict[str, np.ndarray]:
        """The features of image ``name`` for matching: ``keypoints`` (N, 2) float32, ``descriptors``
        (N, D) float32 (transposed back), ``scores`` (N,) (ones if the file has none) and
        ``image_size`` (W, H). ``KeyError`` if the image is not there."""
        if name not in self._file:
            raise KeyError(f"no features for image {name!r} in {self.path}")
        g = self._file[name]
        out = {"keypoints": g["keypoints"][()].astype(np.float32), "image_size": g["image_size"][()]}
        n = len(out["keypoints"])
        out["scores"] = g["scores"][()].astype(np.float32) if "scores" in g else np.ones(n, np.float32)
        if "descriptors" in g:
            out["descriptors"] = np.ascontiguousarray(g["descriptors"][()].T.astype(np.float32))
            if len(out["descriptors"]) != n:
                raise ValueError(f"{self.path}:{name}: descriptors are {g['descriptors'].shape}, expected (D, N) "
                                 f"with N = {n} keypoints")
        return out


def names_to_pair(name0: str, name1: str, separator: str = "/") -> str:
    """hloc's name of the matches group of the pair (``name0``, ``name1``)."""
    return separator.join((name0.replace("/", "-"), name1.replace("/", "-")))


class MatchFile(_KeynetH5):
    """hloc's ``matches.h5`` (module docstring), opened for appending or reading."""

    kind = "matches"

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
        self._write_datasets(names_to_pair(name0, name1), {"matches0": matches0, "matching_scores0": scores0})

    def read(self, name0: str, name1: str) -> tuple[np.ndarray, np.ndarray]:
        """Matches as (M, 2) int64 index pairs (keypoint of ``name0``, keypoint of ``name1``) and their
        (M,) float32 scores, whichever order the pair is stored in (``KeyError`` if absent)."""
        found = self.find(name0, name1)
        if found is None:
            raise KeyError(f"no matches for the pair ({name0}, {name1}) in {self.path}")
        key, reverse = found
        matches0 = self._file[key]["matches0"][()]
        scores0 = self._file[key]["matching_scores0"][()].astype(np.float32)
        matches = matches_to_pairs(matches0)
        return (matches[:, ::-1].copy() if reverse else matches), scores0[matches[:, 0]]


# ------------------------------------------------------------------------------ whole files


def h5_items(source: Any) -> list[str]:
    """The items of an hloc-layout h5 file (a path or an open file): the groups that hold datasets
    (images in ``features.h5``, pairs in ``matches.h5``), sorted; keynet's scratch groups excluded.
    hloc's ``list_h5_names`` lists the same."""
    import h5py

    if not isinstance(source, h5py.File):
        with h5py.File(source, "r") as fd:
            return h5_items(fd)
    found: set[str] = set()

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset) and not name.startswith(PARTIAL):
            found.add(obj.parent.name.strip("/"))

    source.visititems(visit)
    return sorted(found)


def stored_settings(path: str | Path) -> str | None:
    """The settings a keynet h5 file was made with (JSON text), or None if it records none."""
    import h5py

    with h5py.File(path, "r") as fd:
        value = fd.attrs.get("keynet_settings")
    return None if value is None else str(value)


def copy_item(src: Any, name: str, dst: Any) -> None:
    """Copy item ``name`` (a group of datasets) from the open h5 file ``src`` to ``dst``, at the same path."""
    parent = name.rpartition("/")[0]
    if parent:
        dst.require_group(parent)
    src.copy(src[name], dst, name=name)
