"""Structure from motion: ``keynet sfm``'s pipeline against pycolmap's own SIFT (extraction,
exhaustive matching with default options, as a new user would run them; then the same mapping step as
``keynet sfm``: pycolmap's incremental mapper, same seed, same retries), on the multi-view sets of the shared data. Prints one table: registered images, 3D points, mean track
length, mean reprojection error, and for the fountain the camera-centre error after a similarity fit
to the ground truth (mean distance, in % of the largest distance between ground-truth centres).

    python benchmarks/sfm.py [--sets sacre_coeur fountain london_bridge piazza_san_marco] [--seeds K] [--threads 1]
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pycolmap

from keynet.eval.pose import read_strecha_camera
from keynet.io.colmap import parse_intrinsics, quiet_colmap
from keynet.paths import shared_data_dir
from keynet.pipelines.sfm import default_conf, incremental_mapping, model_stats, run_sfm

FOUNTAIN_K = "PINHOLE 2759.48,2764.16,1520.69,1006.81"


def sets() -> dict[str, dict]:
    mv = shared_data_dir() / "multiview"
    pt = mv / "phototourism_sample" / "images"
    fountain = mv / "strecha_fountain_p11"
    return {
        "sacre_coeur": {"dir": mv / "sacre_coeur" / "mapping"},
        "fountain": {"dir": fountain / "images", "intrinsics": FOUNTAIN_K, "gt": fountain / "gt_dense_cameras"},
        "london_bridge": {"dir": pt, "prefix": "london_bridge_"},
        "piazza_san_marco": {"dir": pt, "prefix": "piazza_san_marco_"},
    }


def names_of(spec: dict) -> list[str]:
    return sorted(p.name for p in spec["dir"].glob("*.jpg") if p.name.startswith(spec.get("prefix", "")))


def centre_error(model, gt_dir: Path) -> float:
    """Mean camera-centre distance after a least-squares Sim3 fit (pycolmap.estimate_sim3d), in % of
    the largest distance between ground-truth centres; NaN with fewer than 3 registered images."""
    images = [im for im in model.images.values() if im.has_pose]
    if len(images) < 3:
        return float("nan")
    est = np.array([im.projection_center() for im in images])
    gt = np.array([read_strecha_camera(gt_dir / f"{im.name}.camera")[2] for im in images])
    sim = pycolmap.estimate_sim3d(est, gt)
    aligned = np.array([sim * p for p in est])
    extent = max(np.linalg.norm(a - b) for a in gt for b in gt)
    return float(100 * np.linalg.norm(aligned - gt, axis=1).mean() / extent)


def mapper_conf(spec: dict, threads: int) -> dict:
    """``keynet sfm``'s settings for a set: known intrinsics where the set has them."""
    conf = {**default_conf, "threads": threads}
    if "intrinsics" in spec:
        conf["camera_model"], conf["camera_params"] = parse_intrinsics(spec["intrinsics"])
    return conf


def sift_baseline(spec: dict, names: list[str], work: Path, conf: dict):
    database = work / "database.db"
    reader = pycolmap.ImageReaderOptions()
    mode = pycolmap.CameraMode.PER_IMAGE
    if "intrinsics" in spec:
        model, params = spec["intrinsics"].split()
        reader.camera_model, reader.camera_params, mode = model, params, pycolmap.CameraMode.SINGLE
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.num_threads = conf["threads"]
    with quiet_colmap():
        pycolmap.extract_features(database, spec["dir"], names, mode, reader, extraction, device=pycolmap.Device.cpu)
        matching = pycolmap.FeatureMatchingOptions()
        matching.num_threads = conf["threads"]
        verification = pycolmap.TwoViewGeometryOptions()
        verification.ransac.random_seed = conf["seed"]
        pycolmap.match_exhaustive(database, matching, verification_options=verification, device=pycolmap.Device.cpu)
    (work / "models").mkdir()
    models = incremental_mapping(database, spec["dir"], work / "models", conf, len(names), False)
    return models[0] if models else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", nargs="+", default=list(sets()), choices=list(sets()))
    parser.add_argument("--out", type=Path, default=None, help="keep the outputs here (default: a temporary folder)")
    parser.add_argument("--threads", type=int, default=2, help="1 makes each run repeat exactly")
    parser.add_argument("--seeds", type=int, default=1, help="runs per set and method, seeds 0, 1, ... (default: 1)")
    args = parser.parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix="keynet-sfm-"))
    rows = []
    for name in args.sets:
        spec = sets()[name]
        names = names_of(spec)
        for seed, method in itertools.product(range(args.seeds), ("pycolmap SIFT", "keynet sfm")):
            conf = {**mapper_conf(spec, args.threads), "seed": seed}
            work = root / name / method.split()[0]
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            start = time.perf_counter()
            if method == "keynet sfm":
                model, _ = run_sfm(spec["dir"], names, work, conf, progress=False)
            else:
                model = sift_baseline(spec, names, work, conf)
            seconds = time.perf_counter() - start
            s = model_stats(model)
            err = centre_error(model, spec["gt"]) if "gt" in spec and model is not None else float("nan")
            rows.append((name, method, seed, f"{s['registered']}/{len(names)}", s["points"], s["track_length"],
                         s["reprojection_error"], err, seconds))
            print(*rows[-1], sep=" | ", flush=True)
    print("\n| set | method | seed | registered | 3D points | track length | reproj. error (px) | centre error (% extent) | time (s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        cells = ["–" if np.isnan(v) else f"{v:{f}}" for v, f in ((r[5], ".2f"), (r[6], ".2f"), (r[7], ".3f"))]
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]:,} | {' | '.join(cells)} | {r[8]:.0f} |")


if __name__ == "__main__":
    main()
