"""From a folder of photos to a COLMAP model: extract, pair, match, database, verify, map.

Files under the output folder (each step skips what an earlier run finished):
``features.h5`` and ``matches.h5`` (hloc's layouts), ``pairs.txt``, ``database.db``, ``models/N``
(every reconstruction COLMAP's incremental mapper returns), ``model`` (the largest, binary;
``model_txt`` on request) and ``model.png`` (top view).

Large photos are detected and described at most ``max_size`` px on the longer side; keypoints are
mapped back to the original pixels (centres at integer coordinates), so COLMAP sees the original
image and EXIF or known intrinsics remain valid.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

import cv2
import numpy as np
from tqdm import tqdm

from keynet.io.colmap import create_database, import_features, import_matches, quiet_colmap, verify_matches
from keynet.io.hloc import feature_names
from keynet.io.image import load_image
from keynet.matching.matchers import Matcher
from keynet.matching.pairs import Pair, exhaustive_pairs, read_pairs, sequential_pairs, write_pairs
from keynet.pipelines.match import match_pairs

default_conf: dict[str, Any] = {
    "max_size": 1600,  # longer side for extraction, px (0: original size)
    "num_keypoints": 4096,
    "descriptor": "rootsift",
    "matcher": "smnn",
    "ratio": 0.9,
    "pairs": "exhaustive",  # exhaustive, sequential:K, or a pairs file
    "camera_mode": "per-image",  # or single
    "camera_model": "SIMPLE_RADIAL",
    "camera_params": None,  # known intrinsics (COLMAP's order for camera_model), shared by all images
    "min_model_size": 3,  # smallest reconstruction kept, images
    "threads": None,
}


# ------------------------------------------------------------------------------------------ extract


def resize_for_extraction(image: np.ndarray, max_size: int) -> tuple[np.ndarray, float, float]:
    """``image`` (H, W) shrunk (area interpolation) so its longer side is at most ``max_size`` (0: as is),
    and the factors (sx, sy) from the small image's pixels to the original's."""
    h, w = image.shape[:2]
    if not max_size or max(h, w) <= max_size:
        return image, 1.0, 1.0
    scale = max_size / max(h, w)
    small = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    np.clip(small, 0.0, 1.0, out=small)  # area interpolation may overshoot 1 by rounding
    return small, w / small.shape[1], h / small.shape[0]


def to_original_pixels(keypoints: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """(N, 2) (x, y) keypoints of a resized image in the original's pixels, pixel centres at integers
    (the pixel edges, not the centres, scale: ``x = (x' + 0.5) sx - 0.5``)."""
    return (np.asarray(keypoints, np.float64) + 0.5) * np.array([sx, sy]) - 0.5


def make_extract_fn(conf: dict[str, Any]) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """A function mapping an (H, W) float image to keynet features (keypoints, scales, scores, descriptors).

    Uses ``keynet.Extractor`` where this installation has it; otherwise Key.Net keypoints with upright
    OpenCV SIFT descriptors (``keynet.eval.detectors``), as RootSIFT when asked.
    """
    try:
        from keynet import Extractor  # the features layer
    except ImportError:
        Extractor = None
    if Extractor is not None:
        extractor = Extractor(descriptor=conf["descriptor"], num_keypoints=conf["num_keypoints"])
        return lambda image: {k: np.asarray(v) for k, v in extractor.extract(image).items()}

    from keynet.detector import KeyNetDetector
    from keynet.eval.detectors import SIFTDescriptor

    if conf["descriptor"] not in ("sift", "rootsift"):
        raise ValueError(f"descriptor {conf['descriptor']!r} needs keynet.Extractor; this installation has sift, rootsift")
    detector, sift = KeyNetDetector(num_keypoints=conf["num_keypoints"]), SIFTDescriptor()

    def extract(image: np.ndarray) -> dict[str, np.ndarray]:
        out = {k: v.numpy() for k, v in detector.detect(image).items()}
        desc = sift.compute(image, out["keypoints"], out["scales"])
        if conf["descriptor"] == "rootsift":
            desc = np.sqrt(desc / np.maximum(desc.sum(axis=1, keepdims=True), 1e-12))
        out["descriptors"] = desc
        return out

    return extract


def extract_folder(image_dir: str | Path, names: Sequence[str], features_path: str | Path,
                   conf: dict[str, Any], progress: bool = True) -> int:
    """Features of images ``names`` (relative to ``image_dir``) into an hloc features.h5, skipping
    those already there; returns the number extracted now."""
    import h5py

    conf = {**default_conf, **conf}
    done = set(feature_names(features_path)) if Path(features_path).exists() else set()
    todo = [n for n in names if n not in done]
    if not todo:
        return 0
    settings = json.dumps({k: conf[k] for k in ("max_size", "num_keypoints", "descriptor")}, sort_keys=True)
    extract = make_extract_fn(conf)
    with h5py.File(features_path, "a") as f:
        stored = f.attrs.get("keynet_settings")
        if (stored is None and done) or (stored is not None and stored != settings):
            raise ValueError(f"{features_path} holds features made with other settings ({stored or 'not recorded'}); "
                             "choose another output folder or delete the file")
        f.attrs["keynet_settings"] = settings
        for name in tqdm(todo, desc="extract", unit="image", disable=not progress):
            image = load_image(Path(image_dir) / name)
            small, sx, sy = resize_for_extraction(image, conf["max_size"])
            feats = extract(small)
            n = len(feats["keypoints"])
            data = {
                "keypoints": to_original_pixels(feats["keypoints"], sx, sy).astype(np.float32),
                "scores": np.asarray(feats["scores"], np.float32).reshape(n),
                "descriptors": np.ascontiguousarray(np.asarray(feats["descriptors"], np.float32).reshape(n, -1).T),
                "image_size": np.array([image.shape[1], image.shape[0]], np.int64),
                "scales": (np.asarray(feats["scales"], np.float32) * (sx + sy) / 2).reshape(n),
            }
            tmp = f"_keynet_partial/{name.replace('/', '-')}"
            if tmp in f:
                del f[tmp]
            for k, v in data.items():
                f.create_dataset(f"{tmp}/{k}", data=v)
            parent = name.rpartition("/")[0]
            if parent:
                f.require_group(parent)
            f.move(tmp, name)
            f.flush()
    return len(todo)


# -------------------------------------------------------------------------------------------- pairs


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


# ---------------------------------------------------------------------------------------------- map


def incremental_mapping(database: Path, image_dir: Path, models_dir: Path, conf: dict[str, Any], progress: bool = True):
    """pycolmap's incremental mapper; returns its reconstructions, largest first."""
    import pycolmap

    options = pycolmap.IncrementalPipelineOptions()
    options.min_model_size = conf["min_model_size"]
    options.num_threads = conf["threads"] or -1
    if conf["camera_params"] is not None:  # known calibration: keep it fixed
        options.ba_refine_focal_length = False
        options.ba_refine_extra_params = False
        options.ba_refine_principal_point = False
    # The mapper's callbacks fire on each registration attempt, so the bar counts attempts, not images.
    bar = tqdm(desc="map", unit="attempt", disable=not progress)
    with quiet_colmap():
        models = pycolmap.incremental_mapping(database, image_dir, models_dir, options,
                                              initial_image_pair_callback=lambda: bar.update(2),
                                              next_image_callback=lambda: bar.update(1))
    bar.close()
    return sorted(models.values(), key=lambda r: (r.num_reg_images(), r.num_points3D()), reverse=True)


def model_stats(reconstruction) -> dict[str, float]:
    """Registered images, 3D points, mean track length and mean reprojection error (px)."""
    if reconstruction is None:
        return {"registered": 0, "points": 0, "track_length": 0.0, "reprojection_error": float("nan")}
    return {
        "registered": reconstruction.num_reg_images(),
        "points": reconstruction.num_points3D(),
        "track_length": reconstruction.compute_mean_track_length(),
        "reprojection_error": reconstruction.compute_mean_reprojection_error(),
    }


def run_sfm(image_dir: str | Path, names: Sequence[str], out_dir: str | Path, conf: dict[str, Any] | None = None,
            write_text: bool = False, progress: bool = True) -> tuple[Any, dict[str, float]]:
    """The whole pipeline (module docstring) into ``out_dir``; returns the largest model (or None) and its stats.

    ``database.db`` and the models are made anew each run; features and matches are resumed.
    """
    import pycolmap

    from keynet.viz.sfm import draw_top_view

    conf = {**default_conf, **(conf or {})}
    image_dir, out = Path(image_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if conf["threads"]:
        cv2.setNumThreads(conf["threads"])
    features, matches, pairs_path = out / "features.h5", out / "matches.h5", out / "pairs.txt"
    database = out / "database.db"
    extract_folder(image_dir, names, features, conf, progress)
    pairs = make_pairs(list(names), conf["pairs"])
    write_pairs(pairs_path, pairs)
    match_pairs(features, pairs, matches, Matcher(conf["matcher"], conf["ratio"]), progress)

    for stale in (database, database.with_name(database.name + "-wal"), database.with_name(database.name + "-shm")):
        stale.unlink(missing_ok=True)
    ids = create_database(database, image_dir, names, conf["camera_mode"], conf["camera_model"], conf["camera_params"])
    import_features(database, ids, features)
    import_matches(database, ids, matches, pairs)
    verify_matches(database, pairs_path)

    models_dir = out / "models"
    models_dir.mkdir(exist_ok=True)
    models = incremental_mapping(database, image_dir, models_dir, conf, progress)
    best = models[0] if models else None
    if best is not None:
        (out / "model").mkdir(exist_ok=True)
        best.write_binary(str(out / "model"))
        if write_text:
            (out / "model_txt").mkdir(exist_ok=True)
            best.write_text(str(out / "model_txt"))
        cv2.imwrite(str(out / "model.png"), draw_top_view(best))
    return best, model_stats(best)
