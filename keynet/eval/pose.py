"""Relative-pose evaluation: ground truth, errors and AUC.

Ground truth comes from Strecha's ``.camera`` files (26 numbers: K (3x3), distortion (3), R (3x3,
camera-to-world), C (3, centre in world), width, height; a world point projects as
``x ~ K R^T (X - C)``) or from the common pairs-file format, one line per pair:
``name0 name1 rot0 rot1 K0 (9) K1 (9) T_0to1 (16)`` (SuperGlue's; EXIF rotations must be 0 here).
The relative pose maps camera 0's coordinates to camera 1's: ``X1 = R X0 + t``.

Pose error of an estimate = max(angle between rotations, angle between translation directions), in
degrees; a failed estimate counts as 180. AUC at a threshold: the area under the recall-error curve
up to it, divided by it (SuperGlue's definition, with the curve starting at (0, 0)).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

# How ``keynet eval`` matches and estimates for pose datasets: kornia's match_smnn at ratio 0.85, the
# essential matrix by OpenCV's RANSAC at 1 px with the known intrinsics (as common pose benchmarks do).
POSE_MATCHER = ("smnn", 0.85)
POSE_RANSAC_PX = 1.0


@dataclass
class PosePair:
    """A pair with intrinsics K0, K1 (3, 3) and the ground-truth R (3, 3), t (3,) (``X1 = R X0 + t``)."""

    name0: str
    name1: str
    K0: np.ndarray
    K1: np.ndarray
    R: np.ndarray
    t: np.ndarray


def read_strecha_camera(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """K (3, 3), R (3, 3) camera-to-world and C (3,) from a Strecha ``.camera`` file."""
    v = np.array(Path(path).read_text().split(), dtype=np.float64)
    if len(v) != 26:
        raise ValueError(f"{path}: expected 26 numbers (K, distortion, R, C, width, height), got {len(v)}")
    return v[:9].reshape(3, 3), v[12:21].reshape(3, 3), v[21:24]


def strecha_pairs(camera_dir: str | Path, names: list[str]) -> list[PosePair]:
    """All pairs i < j of images ``names`` (``NNNN.jpg``, cameras ``NNNN.jpg.camera`` in ``camera_dir``);
    ``R = R_j^T R_i``, ``t = R_j^T (C_i - C_j)``."""
    cams = {n: read_strecha_camera(Path(camera_dir) / f"{n}.camera") for n in names}
    pairs = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            (Ka, Ra, Ca), (Kb, Rb, Cb) = cams[a], cams[b]
            pairs.append(PosePair(a, b, Ka, Kb, Rb.T @ Ra, Rb.T @ (Ca - Cb)))
    return pairs


def read_pose_pairs(path: str | Path) -> list[PosePair]:
    """Pairs from a SuperGlue-style pairs file (module docstring)."""
    pairs = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        f = line.split()
        if not f or f[0].startswith("#"):
            continue
        if len(f) != 38:
            raise ValueError(f"{path}:{number}: expected 38 fields (names, rotations, K0, K1, T_0to1), got {len(f)}")
        if int(f[2]) or int(f[3]):
            raise ValueError(f"{path}:{number}: EXIF rotations are not supported")
        v = np.array(f[4:], dtype=np.float64)
        T = v[18:].reshape(4, 4)
        pairs.append(PosePair(f[0], f[1], v[:9].reshape(3, 3), v[9:18].reshape(3, 3), T[:3, :3], T[:3, 3]))
    return pairs


def angle_between_rotations(R0: np.ndarray, R1: np.ndarray) -> float:
    """Degrees of the rotation ``R0^T R1``, from ``||R0 - R1||_F = 2 sqrt(2) sin(angle / 2)`` (accurate
    near 0, where the arccos of the trace loses about 0.05 degrees to rounding)."""
    s = np.linalg.norm(np.asarray(R0) - np.asarray(R1)) / (2 * np.sqrt(2))
    return float(np.degrees(2 * np.arcsin(np.clip(s, 0.0, 1.0))))


def angle_between_vectors(a: np.ndarray, b: np.ndarray) -> float:
    """Degrees between two directions (translation sign included: the cheirality test fixes it)."""
    c = float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))
    return float(np.degrees(np.arccos(np.clip(c, -1.0, 1.0))))


def pose_error(R_est: np.ndarray | None, t_est: np.ndarray | None, R: np.ndarray, t: np.ndarray) -> float:
    """max(rotation error, translation-direction error) in degrees; 180 for a failed estimate."""
    if R_est is None or t_est is None:
        return 180.0
    return max(angle_between_rotations(R_est, R), angle_between_vectors(t_est, t))


def pose_auc(errors: np.ndarray, thresholds=(5.0, 10.0, 20.0)) -> list[float]:
    """AUC (0..1) of the recall-error curve up to each threshold (degrees)."""
    errors = np.sort(np.asarray(errors, np.float64))
    recall = np.arange(1, len(errors) + 1) / len(errors)
    errors, recall = np.r_[0.0, errors], np.r_[0.0, recall]
    aucs = []
    for th in thresholds:
        last = np.searchsorted(errors, th)
        e, r = np.r_[errors[:last], th], np.r_[recall[:last], recall[last - 1]]
        aucs.append(float(np.trapezoid(r, x=e) / th))
    return aucs


# ------------------------------------------------------------------------------- datasets and runs


@dataclass
class PoseDataset:
    """Image pairs with ground-truth relative poses: ``image_dir``/``name`` for each image name."""

    name: str
    image_dir: Path
    pairs: list[PosePair]


def load_pose_dataset(path: str | Path) -> PoseDataset | None:
    """A Strecha folder (``images/`` and ``gt_dense_cameras/*.camera``; all pairs i < j) or a pairs file
    with poses (module docstring; images relative to the file's folder); None for anything else."""
    path = Path(path)
    if path.is_dir() and (path / "gt_dense_cameras").is_dir() and (path / "images").is_dir():
        names = sorted(p.name[: -len(".camera")] for p in (path / "gt_dense_cameras").glob("*.camera"))
        names = [n for n in names if (path / "images" / n).is_file()]
        return PoseDataset(path.name, path / "images", strecha_pairs(path / "gt_dense_cameras", names))
    if path.is_file():
        first = next((ln.split() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")), [])
        if len(first) == 38:
            return PoseDataset(path.stem, path.parent, read_pose_pairs(path))
    return None


def evaluate_pose_pair(fa, fb, pair: PosePair, matcher, threshold: float = POSE_RANSAC_PX) -> dict:
    """One pair: mutual matches of the described features ``fa``, ``fb`` (``keynet.eval.detectors.
    Features``), the essential matrix by OpenCV's RANSAC at ``threshold`` px with the known K, the
    pose by the cheirality test, and its error against the ground truth."""
    import cv2

    from keynet.matching.geometry import estimate_essential, recover_pose
    from keynet.matching.matchers import matches_to_pairs

    (k0, d0), (k1, d1) = fa.copies(), fb.copies()
    m = matches_to_pairs(matcher.match(d0, d1)[0])
    k0, k1 = k0[m[:, 0]], k1[m[:, 1]]
    geometry = estimate_essential(k0, k1, pair.K0, pair.K1, threshold, 0.99999, method=cv2.RANSAC)
    pose = recover_pose(geometry, k0, k1, pair.K0, pair.K1)
    return {"pair": f"{pair.name0} {pair.name1}", "error": pose_error(*(pose or (None, None)), pair.R, pair.t),
            "num_matches": int(len(m)), "num_inliers": int(geometry.num_inliers)}


def summarize_pose(records: list[dict]) -> dict[str, float]:
    """AUC@5/10/20 (fractions), median matches and inliers, number of pairs."""
    aucs = pose_auc([r["error"] for r in records])
    return {"auc@5": aucs[0], "auc@10": aucs[1], "auc@20": aucs[2], "num_pairs": len(records),
            "num_matches": float(np.median([r["num_matches"] for r in records])),
            "num_inliers": float(np.median([r["num_inliers"] for r in records]))}
