"""COLMAP databases from hloc's features.h5 and matches.h5, through pycolmap's API (pycolmap 4).

- Images, cameras, rigs and frames come from ``pycolmap.import_images``, which reads each image's
  size and its EXIF focal length (a prior focal length of 1.2 x the longer side where EXIF has none);
  one camera per image or one shared by all; or known intrinsics for every image.
- Keypoints: keynet's (x, y) have pixel centres at integer coordinates, COLMAP's at half-integers,
  so 0.5 is added (as hloc does).
- Matches are written raw; ``verify_matches`` then runs COLMAP's geometric verification, which
  writes the two-view geometries (the inlier matches) that the mapper uses.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Sequence

import numpy as np

from keynet.io.hloc import FeatureFile, MatchFile
from keynet.matching.pairs import Pair, write_pairs

COLMAP_ORIGIN = 0.5
CAMERA_MODES = ("per-image", "single")
_PARAM_COUNTS = {"SIMPLE_PINHOLE": 3, "PINHOLE": 4, "SIMPLE_RADIAL": 4, "RADIAL": 5, "OPENCV": 8}


def parse_intrinsics(text: str) -> tuple[str, list[float]]:
    """``"MODEL p1,p2,..."`` (COLMAP's parameter order, e.g. ``"PINHOLE fx,fy,cx,cy"``) as (model, params)."""
    model, _, rest = text.strip().partition(" ")
    model = model.upper()
    if model not in _PARAM_COUNTS:
        raise ValueError(f"intrinsics {text!r}: model must be one of {', '.join(_PARAM_COUNTS)}")
    try:
        params = [float(v) for v in rest.replace(",", " ").split()]
    except ValueError:
        raise ValueError(f"intrinsics {text!r}: parameters must be numbers") from None
    if len(params) != _PARAM_COUNTS[model]:
        raise ValueError(f"intrinsics {text!r}: {model} takes {_PARAM_COUNTS[model]} parameters, got {len(params)}")
    return model, params


@contextlib.contextmanager
def quiet_colmap(verbose: bool = False):
    """COLMAP's log (glog, on stderr) limited to errors unless ``verbose``."""
    import pycolmap

    level = pycolmap.logging.minloglevel
    if not verbose:
        pycolmap.logging.minloglevel = 2  # glog's ERROR
    try:
        yield
    finally:
        pycolmap.logging.minloglevel = level


def create_database(database: str | Path, image_dir: str | Path, names: Sequence[str],
                    camera_mode: str = "per-image", camera_model: str = "SIMPLE_RADIAL",
                    camera_params: Sequence[float] | None = None) -> dict[str, int]:
    """A new COLMAP database holding images ``names`` (relative to ``image_dir``) and their cameras.

    ``camera_params`` (COLMAP's order for ``camera_model``) are known intrinsics for all images (one
    shared camera); otherwise each image's camera comes from its EXIF (``camera_mode`` per-image or
    single). Returns image name -> COLMAP image id.
    """
    import pycolmap

    if camera_mode not in CAMERA_MODES:
        raise ValueError(f"camera_mode must be one of {CAMERA_MODES}, got {camera_mode!r}")
    database = Path(database)
    if database.exists():
        raise FileExistsError(f"database {database} exists already")
    options = pycolmap.ImageReaderOptions()
    options.camera_model = camera_model
    mode = pycolmap.CameraMode.PER_IMAGE if camera_mode == "per-image" else pycolmap.CameraMode.SINGLE
    if camera_params is not None:
        options.camera_params = ",".join(f"{p:.17g}" for p in camera_params)
        mode = pycolmap.CameraMode.SINGLE
    pycolmap.Database.open(database).close()  # creates the tables
    with quiet_colmap():
        pycolmap.import_images(database, image_dir, mode, list(names), options)
    with pycolmap.Database.open(database) as db:
        ids = {image.name: image.image_id for image in db.read_all_images()}
    missing = [n for n in names if n not in ids]
    if missing:
        why = "unreadable" if mode == pycolmap.CameraMode.PER_IMAGE else "unreadable, or a size other than the shared camera's"
        raise ValueError(f"COLMAP could not import {len(missing)} image(s), e.g. {missing[0]} ({why})")
    if camera_params is not None:  # a known calibration is not a prior to refine
        with pycolmap.Database.open(database) as db:
            for camera in db.read_all_cameras():
                camera.has_prior_focal_length = True
                db.update_camera(camera)
    return ids


def import_features(database: str | Path, image_ids: dict[str, int], features_path: str | Path) -> None:
    """Write each image's keypoints, shifted to COLMAP's half-pixel origin (``+0.5``)."""
    import pycolmap

    with FeatureFile(features_path, mode="r") as f, pycolmap.Database.open(database) as db:
        for name, image_id in image_ids.items():
            db.write_keypoints(image_id, f.load(name)["keypoints"] + COLMAP_ORIGIN)


def import_matches(database: str | Path, image_ids: dict[str, int], matches_path: str | Path,
                   pairs: Sequence[Pair]) -> int:
    """Write the raw matches of ``pairs`` (each unordered pair once); returns the number of pairs written."""
    import pycolmap

    done = set()
    with MatchFile(matches_path, mode="r") as mf, pycolmap.Database.open(database) as db:
        for a, b in pairs:
            key = frozenset((a, b))
            if key in done:
                continue
            matches, _ = mf.read(a, b)
            db.write_matches(image_ids[a], image_ids[b], matches.astype(np.uint32))
            done.add(key)
    return len(done)


def verify_matches(database: str | Path, pairs_path: str | Path, max_error: float = 4.0,
                   verbose: bool = False, seed: int = 0) -> None:
    """COLMAP's geometric verification of the pairs listed in ``pairs_path`` (hloc's settings:
    up to 20,000 RANSAC trials, minimum inlier ratio 0.1), its RANSAC seeded with ``seed``."""
    import pycolmap

    options = pycolmap.TwoViewGeometryOptions()
    options.ransac.random_seed = seed
    options.ransac.max_num_trials = 20000
    options.ransac.min_inlier_ratio = 0.1
    options.ransac.max_error = max_error
    with quiet_colmap(verbose):
        pycolmap.verify_matches(database, pairs_path, options)


def build_database(database: Path, image_dir: str | Path, names: Sequence[str], features_path: str | Path,
                   matches_path: str | Path, pairs: Sequence[Pair], pairs_path: Path,
                   camera_mode: str = "per-image", camera_model: str = "SIMPLE_RADIAL",
                   camera_params: Sequence[float] | None = None, seed: int = 0) -> None:
    """A new COLMAP database (an old one at that path, with its ``-wal`` and ``-shm`` files, is
    removed) with the images and cameras (``create_database``), keypoints and raw matches of
    ``pairs``, verified by COLMAP; ``pairs`` are written to ``pairs_path`` for the verification."""
    for stale in (database, database.with_name(database.name + "-wal"), database.with_name(database.name + "-shm")):
        stale.unlink(missing_ok=True)
    write_pairs(pairs_path, pairs)
    ids = create_database(database, image_dir, names, camera_mode, camera_model, camera_params)
    import_features(database, ids, features_path)
    import_matches(database, ids, matches_path, pairs)
    verify_matches(database, pairs_path, seed=seed)


def verified_pairs(database: str | Path) -> dict[tuple[str, str], int]:
    """Verified pairs (image names, as stored) -> number of inlier matches, from a database."""
    import pycolmap

    with pycolmap.Database.open(database) as db:
        names = {image.image_id: image.name for image in db.read_all_images()}
        pair_ids, geometries = db.read_two_view_geometries()
    out = {}
    for pair_id, geometry in zip(pair_ids, geometries):
        a, b = pycolmap.pair_id_to_image_pair(pair_id)
        if len(geometry.inlier_matches):
            out[(names[a], names[b])] = len(geometry.inlier_matches)
    return out
