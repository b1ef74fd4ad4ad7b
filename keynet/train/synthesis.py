"""Synthetic training pairs: two views of one photo related by a known random homography.

Conventions (as in the rest of the package): x right, y down, the centre of pixel (col u, row v) is
at (u, v). A pair is ``(src, dst, H)`` with ``src`` and ``dst`` (S, S) uint8 grayscale crops and
``H`` the (3, 3) float64 homography mapping src pixel coordinates to dst pixel coordinates,
``x_dst ~ H @ [x_src, y_src, 1]``.

``src`` is a plain crop of the photo. ``dst`` is the photo warped by ``H`` about the crop centre,
with photometric jitter (colour gains, brightness, contrast, gamma before the warp; blur, noise and
JPEG after it, as a camera would add them). Every pair is drawn from its own generator seeded by
``(seed, split, index)``, so a pair does not depend on the others, on the order of generation or on
the machine. Pair sets are cached as ``.npz`` files named by a hash of everything that defines them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from keynet.io.files import write_atomic

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff")
CACHE_VERSION = 1  # bump when the generator changes, so stale caches are not reused


@dataclass(frozen=True)
class HomographyRange:
    """Ranges of the random homography ``H = shear @ scale @ rotation`` (the released code's order).

    The scale is drawn log-uniformly in ``[min_scale, max_scale]`` (zoom-in and zoom-out equally
    likely for a symmetric range); angle uniform in ``[-max_angle, max_angle]`` degrees; shear (the
    x-by-y term) uniform in ``[-max_shear, max_shear]``.
    """

    min_scale: float
    max_scale: float
    max_angle: float
    max_shear: float


HOMOGRAPHY_PRESETS: dict[str, HomographyRange] = {
    # Paper, Sec. 4 "Training data": scale [0.5, 3.5], rotation +-60 deg, shear +-0.8.
    "paper": HomographyRange(min_scale=0.5, max_scale=3.5, max_angle=60.0, max_shear=0.8),
    # Released code (axelBarroso/Key.Net train_network.py defaults): scale [0.5, 2.0], +-45 deg, shear +-0.8.
    "released": HomographyRange(min_scale=0.5, max_scale=2.0, max_angle=45.0, max_shear=0.8),
    # For validation sets like real benchmark pairs: zoom up to 3.5x either way, any rotation.
    "wide": HomographyRange(min_scale=1 / 3.5, max_scale=3.5, max_angle=180.0, max_shear=0.8),
}


@dataclass(frozen=True)
class JitterConfig:
    """Photometric jitter of the dst view; probabilities are per pair."""

    color_gain: float = 0.3  # per-channel gain in [1 - g, 1 + g] before grayscale (changes gray contrast)
    brightness: float = 0.15  # additive, uniform in [-b, b] (images in [0, 1])
    contrast: tuple[float, float] = (0.6, 1.4)  # multiplicative about the mean
    gamma: tuple[float, float] = (0.7, 1.4)
    blur_prob: float = 0.3  # Gaussian blur, sigma uniform in blur_sigma (defocus/motion-free camera blur)
    blur_sigma: tuple[float, float] = (0.5, 2.0)
    noise_prob: float = 0.3  # additive Gaussian noise, std uniform in [0, noise_std]
    noise_std: float = 0.02
    jpeg_prob: float = 0.3  # JPEG re-encoding, quality uniform in jpeg_quality
    jpeg_quality: tuple[int, int] = (15, 80)


@dataclass(frozen=True)
class PairConfig:
    """Everything that defines a set of pairs (and so its cache key)."""

    num_pairs: int
    crop: int  # S: side of both crops, pixels
    homography: HomographyRange
    jitter: JitterConfig
    seed: int
    split: str  # "train" or "val": a separate image subset and random stream
    val_fraction: float = 0.05  # share of the images held out for the "val" split
    min_texture: float = 0.1  # share of pixels with gradient magnitude > texture_grad, in both crops
    texture_grad: float = 0.04


def list_images(folder: str | Path) -> list[Path]:
    """All image files below ``folder`` (recursive), sorted for a machine-independent order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) below {folder}")
    return files


def photo_folder(image_dir: str | Path = "") -> Path:
    """The folder of training photos: ``image_dir``, or by default the shared data's ``train_images``."""
    from keynet.paths import shared_data_dir

    return Path(image_dir) if image_dir else shared_data_dir() / "train_images"


def pair_images(image_dir: str | Path, conf: "PairConfig") -> list[Path]:
    """The photos below ``image_dir`` that the pairs of ``conf`` are drawn from (its split)."""
    return split_images(list_images(image_dir), conf.seed, conf.val_fraction, conf.split)


def split_images(images: list[Path], seed: int, val_fraction: float, split: str) -> list[Path]:
    """The ``split`` ("train" | "val") share of ``images``, disjoint from the other one."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    order = np.random.default_rng([seed, 0]).permutation(len(images))
    n_val = max(1, int(round(val_fraction * len(images)))) if len(images) > 1 else 0
    idx = order[:n_val] if split == "val" else order[n_val:]
    if len(idx) == 0:
        raise ValueError(f"no images left for split {split!r} ({len(images)} images, val_fraction={val_fraction})")
    return [images[i] for i in sorted(idx)]


def random_homography(rng: np.random.Generator, rng_conf: HomographyRange) -> np.ndarray:
    """A (3, 3) affine ``shear @ scale @ rotation`` about the origin."""
    scale = float(np.exp(rng.uniform(np.log(rng_conf.min_scale), np.log(rng_conf.max_scale))))
    angle = np.deg2rad(rng.uniform(-rng_conf.max_angle, rng_conf.max_angle))
    shear = rng.uniform(-rng_conf.max_shear, rng_conf.max_shear)
    c, s = np.cos(angle), np.sin(angle)
    rotation = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    scaling = np.diag([scale, scale, 1.0])
    shearing = np.array([[1.0, shear, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    return shearing @ scaling @ rotation


def _translation(tx: float, ty: float) -> np.ndarray:
    return np.array([[1.0, 0.0, tx], [0.0, 1.0, ty], [0.0, 0.0, 1.0]])


def texture_share(gray: np.ndarray, grad_threshold: float) -> float:
    """Share of pixels of a float [0, 1] image whose Sobel gradient magnitude exceeds the threshold.

    The Sobel filters are normalised (divided by 8) so a ramp of slope g per pixel gives g.
    """
    gx = cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=3) / 8.0
    gy = cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=3) / 8.0
    return float(np.mean(np.hypot(gx, gy) > grad_threshold))


def _to_gray(bgr: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY).astype(np.float32) / 255.0


def _jitter_before_warp(bgr: np.ndarray, rng: np.random.Generator, j: JitterConfig) -> np.ndarray:
    """Colour gains, then brightness/contrast/gamma on the grayscale image; float32 in [0, 1]."""
    gains = rng.uniform(1.0 - j.color_gain, 1.0 + j.color_gain, size=3)
    gray = _to_gray(np.clip(bgr.astype(np.float32) * gains, 0, 255).astype(np.uint8))
    mean = float(gray.mean())
    gray = (gray - mean) * rng.uniform(*j.contrast) + mean + rng.uniform(-j.brightness, j.brightness)
    return np.clip(gray, 0.0, 1.0) ** rng.uniform(*j.gamma)


def _jitter_after_warp(gray: np.ndarray, rng: np.random.Generator, j: JitterConfig) -> np.ndarray:
    """Blur, noise and JPEG, each with its probability; float [0, 1] in, uint8 out."""
    # Draw every random number whether or not it is used, so each pair consumes a fixed stream.
    do_blur, do_noise, do_jpeg = rng.random(3) < (j.blur_prob, j.noise_prob, j.jpeg_prob)
    sigma = rng.uniform(*j.blur_sigma)
    noise_std = rng.uniform(0.0, j.noise_std)
    quality = int(rng.integers(j.jpeg_quality[0], j.jpeg_quality[1] + 1))
    noise = rng.standard_normal(gray.shape).astype(np.float32)
    if do_blur:
        gray = cv2.GaussianBlur(gray, (0, 0), sigma)
    if do_noise:
        gray = gray + noise_std * noise
    out = np.clip(np.round(gray * 255.0), 0, 255).astype(np.uint8)
    if do_jpeg:
        ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, quality])
        assert ok, "OpenCV failed to encode a JPEG"
        out = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)
    return out


def make_pair(
    bgr: np.ndarray, rng: np.random.Generator, conf: PairConfig, max_tries: int = 20
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """One pair ``(src (S,S) uint8, dst (S,S) uint8, H (3,3) src->dst)`` from a (h, w, 3) BGR photo.

    Draws a crop position and a homography about the crop centre until the whole dst view falls
    inside the photo and both crops pass the texture check; None after ``max_tries`` failures
    (e.g. a photo too small for the crop).
    """
    s = conf.crop
    h, w = bgr.shape[:2]
    if min(h, w) < s:
        return None
    c = (s - 1) / 2.0  # crop centre in crop pixel coordinates
    corners = np.array([[0, 0, 1], [s - 1, 0, 1], [0, s - 1, 1], [s - 1, s - 1, 1]], dtype=np.float64).T
    gray = _to_gray(bgr)
    for _ in range(max_tries):
        x0 = int(rng.integers(0, w - s + 1))
        y0 = int(rng.integers(0, h - s + 1))
        a = random_homography(rng, conf.homography)
        h_src_dst = _translation(c, c) @ a @ _translation(-c, -c)
        h_img_dst = h_src_dst @ _translation(-x0, -y0)
        back = np.linalg.inv(h_img_dst) @ corners
        back = back[:2] / back[2]
        if back.min() < 0 or back[0].max() > w - 1 or back[1].max() > h - 1:
            continue
        src = gray[y0 : y0 + s, x0 : x0 + s]
        if texture_share(src, conf.texture_grad) < conf.min_texture:
            continue
        # Anti-alias before shrinking: blur by the Gaussian that brings the smallest singular value
        # of the linear part to Nyquist (sigma = 0.5 * sqrt(1/s^2 - 1)).
        s_min = float(np.linalg.svd(a[:2, :2], compute_uv=False).min())
        sigma = 0.5 * np.sqrt(1.0 / s_min**2 - 1.0) if s_min < 1.0 else 0.0
        # Jitter and blur only the part of the photo the dst view sees (plus the blur's support).
        margin = int(np.ceil(3.0 * sigma)) + 2
        xl, yl = (max(0, int(np.floor(v)) - margin) for v in back.min(1))
        xh, yh = min(w, int(np.ceil(back[0].max())) + margin + 1), min(h, int(np.ceil(back[1].max())) + margin + 1)
        photo = _jitter_before_warp(bgr[yl:yh, xl:xh], rng, conf.jitter)
        if sigma > 0.0:
            photo = cv2.GaussianBlur(photo, (0, 0), sigma)
        h_region_dst = h_img_dst @ _translation(xl, yl)
        warped = cv2.warpPerspective(photo, h_region_dst, (s, s), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        dst = _jitter_after_warp(warped, rng, conf.jitter)
        if texture_share(dst.astype(np.float32) / 255.0, conf.texture_grad) < conf.min_texture:
            continue
        return np.round(src * 255.0).astype(np.uint8), dst, h_src_dst
    return None


def generate_pairs(images: list[Path], conf: PairConfig, progress: bool = True) -> dict[str, np.ndarray]:
    """``conf.num_pairs`` pairs from ``images``: arrays ``src``, ``dst`` (N,S,S) uint8, ``H`` (N,3,3).

    Pair ``i`` is drawn from image ``i mod len(images)`` (images visited in a seeded order) with the
    generator ``(seed, split, i)``; a failed pair is retried with the next image (same generator
    stream). Raises if the images cannot give ``num_pairs`` pairs.
    """
    split_id = {"train": 1, "val": 2}[conf.split]
    order = np.random.default_rng([conf.seed, split_id]).permutation(len(images))
    s, n = conf.crop, conf.num_pairs
    src = np.zeros((n, s, s), np.uint8)
    dst = np.zeros((n, s, s), np.uint8)
    hom = np.zeros((n, 3, 3), np.float64)
    cache: dict[int, np.ndarray] = {}
    for i in tqdm(range(n), desc=f"pairs {conf.split} {s}px", disable=not progress, mininterval=2.0):
        rng = np.random.default_rng([conf.seed, split_id, i])
        for attempt in range(len(images)):
            k = int(order[(i + attempt) % len(images)])
            if k not in cache:
                # Image i mod n is used again only n pairs later: keep just the current one decoded.
                cache.clear()
                bgr = cv2.imread(str(images[k]), cv2.IMREAD_COLOR)
                if bgr is None:
                    raise ValueError(f"cannot decode image {images[k]}")
                cache[k] = bgr
            pair = make_pair(cache[k], rng, conf)
            if pair is not None:
                src[i], dst[i], hom[i] = pair
                break
        else:
            raise RuntimeError(f"no image gives a valid {s}px pair (texture/size checks failed everywhere)")
    return {"src": src, "dst": dst, "H": hom}


def cache_key(images: list[Path], conf: PairConfig) -> str:
    """A short hash of the image list (names and sizes) and the pair configuration."""
    payload = {
        "version": CACHE_VERSION,
        "conf": asdict(conf),
        "images": [(p.name, p.stat().st_size) for p in images],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def load_or_generate(image_dir: str | Path, conf: PairConfig, cache_dir: str | Path, progress: bool = True) -> dict[str, np.ndarray]:
    """The pairs of ``conf`` from the ``.npz`` cache in ``cache_dir``, generating and caching them first if needed.

    The cache file is written to a temporary name and moved into place, so a killed run never
    leaves a truncated cache behind.
    """
    images = pair_images(image_dir, conf)
    cache_dir = Path(cache_dir)
    path = cache_dir / f"pairs_{conf.split}_{conf.crop}px_{conf.num_pairs}_{cache_key(images, conf)}.npz"
    if path.is_file():
        with np.load(path) as f:
            return {k: f[k] for k in ("src", "dst", "H")}
    pairs = generate_pairs(images, conf, progress=progress)
    cache_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: np.savez(tmp, **pairs))
    return pairs


def lower_exposure(views: np.ndarray, seed: int, gain: tuple[float, float] = (0.3, 1.0),
                   gamma: tuple[float, float] = (1.0, 2.2)) -> np.ndarray:
    """(N, S, S) uint8 views as taken with less light: ``g * x ** gamma`` of each view in [0, 1], with
    g and gamma uniform in their ranges, one draw per view from ``seed``'s stream, back to uint8 (so
    that dark views also lose gray levels, as a short exposure does). A validation set of exposure
    changes (``keynet pairs --darken``), stronger than the training jitter."""
    rng = np.random.default_rng(seed)
    out = np.empty_like(views)
    for i, view in enumerate(views):
        g, gam = rng.uniform(*gain), rng.uniform(*gamma)
        out[i] = np.clip(np.round(g * (view.astype(np.float32) / 255.0) ** gam * 255.0), 0, 255).astype(np.uint8)
    return out


def write_pair_list(pairs: dict[str, np.ndarray], folder: str | Path) -> Path:
    """Pairs as an image-pair list that ``keynet eval --data`` and ``keynet train --val-sequence``
    read (``keynet.eval.datasets.load_pairs_file``): ``NNNNNN_a.png``, ``NNNNNN_b.png``,
    ``NNNNNN_H.txt`` (src to dst, ``%.10e``) in ``folder``, and ``pairs.txt`` naming them, written
    last (atomically), so that a list never names a missing file."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (a, b, h) in enumerate(zip(pairs["src"], pairs["dst"], pairs["H"])):
        names = (f"{i:06d}_a.png", f"{i:06d}_b.png", f"{i:06d}_H.txt")
        for name, image in zip(names, (a, b)):
            if not cv2.imwrite(str(folder / name), image):
                raise OSError(f"cannot write {folder / name}")
        np.savetxt(folder / names[2], h, fmt="%.10e")
        lines.append(" ".join(names))
    out = folder / "pairs.txt"
    write_atomic(out, lambda tmp: Path(tmp).write_text("\n".join(lines) + "\n"))
    return out
