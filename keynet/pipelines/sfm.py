"""From a folder of photos to a COLMAP model: extract, pair, match, database, verify, map.

Files under the output folder (each step skips what an earlier run finished):
``features.h5`` and ``matches.h5`` (hloc's layouts), ``pairs.txt``, ``database.db``, ``models/N``
(every reconstruction COLMAP's incremental mapper returns), ``model`` (the largest, binary;
``model_txt`` on request) and ``model.png`` (top view).

Large photos are detected and described at most ``max_size`` px on the longer side (the Extractor's
``resize``); keypoints are mapped back to the original pixels (centres at integer coordinates), so
COLMAP sees the original image and EXIF or known intrinsics remain valid.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

import cv2
from tqdm import tqdm

from keynet.io.colmap import build_database, quiet_colmap
from keynet.io.files import write_image
from keynet.matching.matchers import Matcher
from keynet.matching.pairs import make_pairs
from keynet.pipelines.extract import ExtractReport, extract_to_h5
from keynet.pipelines.match import match_pairs

default_conf: dict[str, Any] = {
    "max_size": 1600,  # longer side for extraction, px (0: original size)
    "num_keypoints": 4096,
    "orientation": "upright",  # photos of a collection are mostly upright: gradient if they turn
    "descriptor": "rootsift",
    "matcher": "mnn",
    "ratio": 0.9,
    "pairs": "exhaustive",  # exhaustive, sequential:K, or a pairs file
    "camera_mode": "per-image",  # or single
    "camera_model": "SIMPLE_RADIAL",
    "camera_params": None,  # known intrinsics (COLMAP's order for camera_model), shared by all images
    "min_model_size": 3,  # smallest reconstruction kept, images
    "threads": None,
    "seed": 0,  # COLMAP's random generator (verification and mapping): the same run gives the same model
    "mapper_tries": 3,  # mapper runs (seeds seed, seed+1, ...) while the largest model holds under half the images
}


# ------------------------------------------------------------------------------------------ extract


def extract_folder(image_dir: Path, names: Sequence[str], features_path: Path, conf: dict[str, Any],
                   progress: bool = True) -> ExtractReport:
    """Features of images ``names`` (relative to ``image_dir``) into an hloc features.h5, skipping
    those already there (``keynet.pipelines.extract``), at most ``max_size`` px on the longer side."""
    from keynet.features import Extractor

    keys = ("max_size", "num_keypoints", "orientation", "descriptor")
    extractor = Extractor(descriptor=conf["descriptor"], orientation=conf["orientation"],
                          num_keypoints=conf["num_keypoints"], resize=conf["max_size"] or None)
    settings = {**{k: conf[k] for k in keys}, **{k: extractor.detector.conf[k] for k in extractor.detection_options}}
    return extract_to_h5([image_dir / n for n in names], image_dir, features_path, extractor, settings, progress)


# ---------------------------------------------------------------------------------------------- map


def incremental_mapping(database: Path, image_dir: Path, models_dir: Path, conf: dict[str, Any], num_images: int,
                        progress: bool = True):
    """pycolmap's incremental mapper; returns its reconstructions, largest first, also written to
    ``models_dir/0, 1, ...``.

    COLMAP picks its initial pair by random sampling, and on weakly connected collections an unlucky
    draw ends in a few-image model (on 10 photos of sacre_coeur about one seed in ten registered 3
    images, the others all 10). So while the largest model holds fewer than half of ``num_images``,
    the mapper runs again with the next seed, up to ``mapper_tries`` runs, and the best run is kept.
    """
    import pycolmap

    options = pycolmap.IncrementalPipelineOptions()
    options.min_model_size = conf["min_model_size"]
    options.num_threads = conf["threads"] or -1
    if conf["camera_params"] is not None:  # known calibration: keep it fixed
        options.ba_refine_focal_length = False
        options.ba_refine_extra_params = False
        options.ba_refine_principal_point = False

    def size(reconstruction) -> tuple[int, int]:
        return reconstruction.num_reg_images(), reconstruction.num_points3D()

    best: list = []
    # The mapper's callbacks fire on each registration attempt, so the bar counts attempts, not images.
    bar = tqdm(desc="map", unit="attempt", disable=not progress)
    for attempt in range(max(1, conf["mapper_tries"])):
        options.random_seed = conf["seed"] + attempt
        with tempfile.TemporaryDirectory(dir=models_dir) as scratch, quiet_colmap():
            found = pycolmap.incremental_mapping(database, image_dir, scratch, options,
                                                 initial_image_pair_callback=lambda: bar.update(2),
                                                 next_image_callback=lambda: bar.update(1))
        # COLMAP's filtering can leave a model with registered images and no 3D point: a failed run.
        models = sorted((m for m in found.values() if m.num_points3D() > 0), key=size, reverse=True)
        if models and (not best or size(models[0]) > size(best[0])):
            best = models
        if best and 2 * best[0].num_reg_images() >= num_images:
            break
    bar.close()
    for i, model in enumerate(best):
        (models_dir / str(i)).mkdir(exist_ok=True)
        model.write_binary(str(models_dir / str(i)))
    return best


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

    from keynet.viz.sfm import draw_top_view

    conf = {**default_conf, **(conf or {})}
    image_dir, out = Path(image_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if conf["threads"]:
        cv2.setNumThreads(conf["threads"])
    features, matches, pairs_path = out / "features.h5", out / "matches.h5", out / "pairs.txt"
    database = out / "database.db"
    failed = extract_folder(image_dir, names, features, conf, progress).failed
    for name, reason in failed:
        print(f"keynet sfm: skipped {name}: {reason}", file=sys.stderr)
    names = [n for n in names if n not in dict(failed)]
    pairs = make_pairs(list(names), conf["pairs"])
    match_pairs(features, pairs, matches, Matcher(conf["matcher"], conf["ratio"]), progress)
    build_database(database, image_dir, names, features, matches, pairs, pairs_path,
                   conf["camera_mode"], conf["camera_model"], conf["camera_params"], conf["seed"])

    models_dir = out / "models"
    shutil.rmtree(models_dir, ignore_errors=True)
    models_dir.mkdir()
    models = incremental_mapping(database, image_dir, models_dir, conf, len(names), progress)
    best = models[0] if models else None
    if best is not None:
        (out / "model").mkdir(exist_ok=True)
        best.write_binary(str(out / "model"))
        if write_text:
            (out / "model_txt").mkdir(exist_ok=True)
            best.write_text(str(out / "model_txt"))
        write_image(out / "model.png", draw_top_view(best))
    return best, model_stats(best)
