"""Features in hloc's ``features.h5`` layout (Hierarchical-Localization, ``hloc/extract_features.py``).

One group per image, named by the image's path relative to the image folder with '/' separators
(so sub-folders become nested groups), holding:

- ``keypoints`` (N, 2) float32 (x, y), pixel centres at integer coordinates (hloc's convention too:
  it adds 0.5 only when writing COLMAP databases), with the attribute ``uncertainty`` (pixels);
- ``scores`` (N,) float32; ``descriptors`` (D, N) float32 (hloc stores them transposed);
- ``image_size`` (2,) int64 as (W, H);
- keynet's extras, which hloc's readers ignore: ``scales`` (N,) radii in pixels and
  ``orientations`` (N,) degrees (OpenCV's sense, see ``keynet.features``).

Writing is made safe against a killed run: an image's datasets are written into a group under
``PARTIAL`` and moved to their name only when complete, then the file is flushed. A group that has
its name is therefore always complete; leftovers under ``PARTIAL`` are removed on the next open.
The settings that produced the features are kept in the file's attributes, so that a resumed run
cannot mix features of different settings.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import numpy as np

PARTIAL = "_keynet_partial"
_REQUIRED = ("keypoints", "scores", "descriptors", "image_size")


class FeatureFile:
    """An hloc ``features.h5`` opened for appending (created if missing); a context manager.

    Args:
        path: the h5 file.
        settings: a JSON-serialisable dict describing how the features were made; stored on a new
            file, and compared with the stored one on an existing file (``ValueError`` if they differ).
    """

    def __init__(self, path: str | Path, settings: dict[str, Any] | None = None) -> None:
        import h5py

        self.path = Path(path)
        # The default (earliest) file format: "latest" marks the file open-for-write in its superblock,
        # and a killed run would leave a file that readers refuse until `h5clear` is run on it.
        self._file = h5py.File(self.path, "a")
        try:
            if PARTIAL in self._file:
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
            raise ValueError(f"{self.path} holds features made with other settings ({stored or 'not recorded'}); "
                             "choose another file or overwrite it")
        self._file.attrs["keynet_settings"] = text

    def __enter__(self) -> FeatureFile:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def __contains__(self, name: str) -> bool:
        """Whether the file holds the complete features of image ``name``."""
        import h5py

        obj = self._file.get(name)
        return isinstance(obj, h5py.Group) and all(isinstance(obj.get(k), h5py.Dataset) for k in _REQUIRED)

    def names(self) -> list[str]:
        """Names of the images with features, sorted."""
        return h5_items(self._file)

    def write(self, name: str, features: dict[str, Any]) -> None:
        """Store the features of image ``name`` (a relative path with '/'): a dict with ``keypoints``
        (N, 2), ``scores`` (N,), ``descriptors`` (N, D), ``image_size`` (W, H), and optionally
        ``scales`` and ``orientations`` (N,); tensors or arrays. Replaces features of that name."""
        arrays = {k: np.asarray(v.cpu() if hasattr(v, "cpu") else v) for k, v in features.items()}
        missing = [k for k in _REQUIRED if k not in arrays]
        if missing:
            raise ValueError(f"features of {name} lack {missing}")
        n = len(arrays["keypoints"])
        desc = arrays["descriptors"]
        if desc.ndim != 2 or len(desc) != n:
            raise ValueError(f"descriptors of {name} must be (N, D) with N = {n}, got {desc.shape}")
        data = {
            "keypoints": arrays["keypoints"].astype(np.float32).reshape(n, 2),
            "scores": arrays["scores"].astype(np.float32).reshape(n),
            "descriptors": np.ascontiguousarray(desc.astype(np.float32).T),
            "image_size": np.rint(arrays["image_size"]).astype(np.int64).reshape(2),
        }
        for k in ("scales", "orientations"):
            if k in arrays:
                data[k] = arrays[k].astype(np.float32).reshape(n)
        tmp = self._file.require_group(PARTIAL).create_group(uuid.uuid4().hex)
        for k, v in data.items():
            tmp.create_dataset(k, data=v)
        tmp["keypoints"].attrs["uncertainty"] = 1.0  # hloc's detection noise, pixels
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
        """Copy image ``name`` from another open h5 file ``src`` (as ``write`` stores it: into a
        scratch group first, then moved to its name and flushed)."""
        tmp = f"{PARTIAL}/{uuid.uuid4().hex}"
        self._file.require_group(PARTIAL)
        src.copy(src[name], self._file, name=tmp)
        self._move_into_place(tmp, name)

    def record_failures(self, failed: list[tuple[str, str]], written: list[str]) -> None:
        """Keep the images that failed, with the reason, in the file's ``keynet_failures`` attribute
        (a JSON object name -> reason; hloc's readers ignore attributes); images now written leave it."""
        failures = self.failures()
        for name in written:
            failures.pop(name, None)
        failures.update(dict(failed))
        self._file.attrs["keynet_failures"] = json.dumps(failures, sort_keys=True)
        self._file.flush()

    def failures(self) -> dict[str, str]:
        """Images that failed in the runs that wrote this file, and why (``record_failures``)."""
        return json.loads(self._file.attrs.get("keynet_failures", "{}"))

    def read(self, name: str) -> dict[str, np.ndarray]:
        """The datasets of image ``name`` as stored (``descriptors`` is (D, N))."""
        return {k: v[()] for k, v in self._file[name].items()}


def h5_items(source: Any) -> list[str]:
    """The items of an hloc-layout h5 file (a path or an open file): the groups that hold datasets
    (images in ``features.h5``, pairs in ``matches.h5``), sorted; keynet's scratch groups excluded."""
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
