"""Multi-scale Key.Net keypoint detection: image pyramid, non-maxima suppression, global top-k.

Conventions (stated once for the package):
- Coordinates: x right, y down, the centre of pixel (col u, row v) is at (u, v).
- Scale: the radius in pixels of the keypoint's support, as in a kornia LAF ``[A | t]`` with
  ``A = scale * I``; it is ``scale_mult`` (22) times the pyramid level's downsampling factor.
- A pyramid level of size (h, w) of an (H, W) image has factors fx = W / w, fy = H / h; level
  pixel u maps to image x = (u + 0.5) * fx - 0.5, the exact inverse of ``align_corners=False``
  resampling. ``compat="kornia"`` uses kornia's x = u * fx instead, to reproduce its numbers.
"""

from __future__ import annotations

import math
import threading
import warnings
from functools import partial
from pathlib import Path
from typing import Any, Callable, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .io.image import to_image_batch
from .inference import COMPUTE_DTYPES, FastKeyNet, eager_on_cpu, downsampled_side, native_bfloat16, pyrdown, upsampled_side
from .kernels import local_maxima
from .model import KeyNet
from .parallel import caller_single_threaded, run_tasks
from .weights import load_model

ImageInput = Union[str, Path, np.ndarray, torch.Tensor]


def _window_max(x: torch.Tensor, size: int, dim: int) -> torch.Tensor:
    """Max over windows ``[i, i + size)`` along ``dim`` ('valid': the result is ``size - 1`` shorter).

    Built by doubling (windows of 1, 2, 4, ... then one overlapping step), so it costs about
    log2(size) elementwise maxima instead of ``size`` comparisons per position.
    """
    width = 1
    while 2 * width <= size:
        x = torch.maximum(x.narrow(dim, 0, x.shape[dim] - width), x.narrow(dim, width, x.shape[dim] - width))
        width *= 2
    if width < size:
        step = size - width  # two windows of `width`, `step` apart, cover exactly `size`
        x = torch.maximum(x.narrow(dim, 0, x.shape[dim] - step), x.narrow(dim, step, x.shape[dim] - step))
    return x


def strict_maxima(score: torch.Tensor, size: int) -> torch.Tensor:
    """Boolean (B,1,H,W) map of positions strictly greater than every other value in their
    ``size`` x ``size`` window (ties suppress each other, as kornia's ``nms2d``); the window is
    clipped at the image edge.

    The window minus its centre is covered by the full-width rows above and below the centre row,
    and the centre row's left and right halves.
    """
    r = size // 2
    if r == 0:
        return torch.ones_like(score, dtype=torch.bool)
    h, w = score.shape[-2:]
    lo = float("-inf")
    padded = F.pad(score, (r, r, r, r), value=lo)  # (B,1,H+2r,W+2r)
    rows = _window_max(padded, size, dim=3)  # (B,1,H+2r,W): max over each full-width row segment
    above = _window_max(rows[..., : h + r - 1, :], r, dim=2)  # rows y-r .. y-1
    below = _window_max(rows[..., r + 1 :, :], r, dim=2)  # rows y+1 .. y+r
    centre = padded[..., r : r + h, :]
    left = _window_max(centre[..., : w + r - 1], r, dim=3)  # cols x-r .. x-1
    right = _window_max(centre[..., r + 1 :], r, dim=3)  # cols x+1 .. x+r
    neighbours = torch.maximum(torch.maximum(above, below), torch.maximum(left, right))
    return score > neighbours


def keypoints_to_lafs(keypoints: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Upright isotropic kornia LAFs ``[[s, 0, x], [0, s, y]]`` of shape (N, 2, 3)."""
    lafs = torch.zeros(keypoints.shape[0], 2, 3, dtype=keypoints.dtype, device=keypoints.device)
    lafs[:, 0, 0] = scales
    lafs[:, 1, 1] = scales
    lafs[:, :, 2] = keypoints
    return lafs


def subpixel_offsets(score: torch.Tensor, v: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sub-pixel offsets (du, dv) of maxima at (v, u) of an (h, w) ``score``: the vertex of the
    parabola through each maximum and its two neighbours, per axis (as SIFT and SuperPoint refine
    theirs), clamped to half a pixel. Maxima at least one pixel from the edges (the border ensures it).
    """
    r = score.double()
    c = r[v, u]
    left, right, up, down = r[v, u - 1], r[v, u + 1], r[v - 1, u], r[v + 1, u]
    # strict maxima make both second differences negative; a flat side gives a zero step
    dxx, dyy = left - 2 * c + right, up - 2 * c + down
    du = torch.where(dxx < 0, -(right - left) / (2 * dxx), torch.zeros_like(c)).clamp(-0.5, 0.5)
    dv = torch.where(dyy < 0, -(down - up) / (2 * dyy), torch.zeros_like(c)).clamp(-0.5, 0.5)
    return du, dv


def checked_input_std(value: Any, name: str = "input_std") -> float:
    """``value`` as the ``input_std`` option (a float); anything but a finite number >= 0 is a
    ``ValueError`` that calls it ``name``."""
    try:
        std = float(value)
    except (TypeError, ValueError):
        std = math.nan
    if not (math.isfinite(std) and std >= 0):
        raise ValueError(f"{name} must be a finite number >= 0 (0: off), got {value!r}")
    return std


def contrast_normalised(image: torch.Tensor, std: float) -> torch.Tensor:
    """(B, 1, H, W) ``image`` with each image scaled to standard deviation ``std`` (unchanged if 0).

    Key.Net's input maps are derivatives and their products, so a gain g on the image scales them by
    g and g^2 and moves the network's maxima; after this scaling the keypoints do not depend on g
    (nor, through the derivatives, on an added brightness). A constant image is left as it is.
    """
    if not std:
        return image
    # in float64: a float32 sum over a photo's pixels depends on the order (torch's and ONNX's differ)
    spread = image.double().std(dim=(1, 2, 3), keepdim=True, unbiased=False)
    gain = torch.where(spread > 1e-6, std / spread.clamp_min(1e-6), torch.ones_like(spread))
    return image * gain.to(image.dtype)


class LevelScorer:
    """Keypoints of one pyramid level: the network's response (in row bands when the level is
    large), strict maxima above the score threshold and outside the border, and their mapping from
    level pixels to image coordinates (see the module docstring). Used by ``KeyNetDetector`` and,
    step by step, by the ONNX export of the whole detection.

    Args:
        net: the response network (``FastKeyNet`` for Key.Net, or any (B,1,H,W) -> (B,1,H,W) module).
        conf: the detector's options (``KeyNetDetector.default_conf``).
    """

    # Rows of context above and below a band: more than the network's receptive-field radius
    # (about 20 px: the Sobel pair, three 5x5 convs at 1/1.44 resolution, two blurs, the last conv).
    band_margin = 32

    def __init__(self, net: nn.Module, conf: dict[str, Any]) -> None:
        self.net = net
        self.conf = conf

    def level_mask(self, mask: torch.Tensor, size: tuple[int, int], fx: float, fy: float) -> torch.Tensor:
        """The image mask sampled at the image pixel nearest each level pixel's mapped position."""
        (nh, nw), (h, w) = size, mask.shape[-2:]
        u = torch.arange(nw, dtype=torch.float64)
        v = torch.arange(nh, dtype=torch.float64)
        xs, ys = self.map(u, fx), self.map(v, fy)
        xs = xs.round().clamp(0, w - 1).long().to(mask.device)
        ys = ys.round().clamp(0, h - 1).long().to(mask.device)
        return mask[:, :, ys][:, :, :, xs]

    def map(self, coord: torch.Tensor, factor: float) -> torch.Tensor:
        if self.conf["compat"] == "kornia":
            return coord * factor
        return (coord + 0.5) * factor - 0.5

    def bands(self, h: int, w: int) -> list[tuple[int, int]]:
        """Row ranges [r0, r1) covering h rows, each at most ``band_pixels`` pixels (one band if it fits)."""
        rows = max(self.band_margin, self.conf["band_pixels"] // max(w, 1))
        return [(r0, min(h, r0 + rows)) for r0 in range(0, h, rows)]

    def in_bands(self, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, margin: int) -> torch.Tensor:
        """``fn(x)`` for a map-to-same-size function, computed in row bands when ``x`` is large: each
        band sees ``margin`` rows of context on each side, of which its result keeps none."""
        h, w = x.shape[-2:]
        bands = self.bands(h, w)
        if len(bands) == 1:
            return fn(x)
        out = None
        for r0, r1 in bands:
            a, z = max(0, r0 - margin), min(h, r1 + margin)
            part = fn(x[..., a:z, :])[..., r0 - a : r1 - a, :]
            if out is None:
                out = part.new_empty(x.shape)
            out[..., r0:r1, :] = part
        return out

    def response(self, level: torch.Tensor) -> torch.Tensor:
        """The network's response to ``level``, in row bands when the level is large.

        Key.Net's own network (``FastKeyNet``) bands exactly: the response equals the whole-level
        one. Another ``network`` gets bands with ``band_margin`` rows of context on each side; then
        a network that resamples internally (an exported Key.Net) sees each band's own resampling
        grid, which changes scores slightly. Levels up to ``band_pixels`` are computed whole.
        """
        if isinstance(self.net, FastKeyNet):
            return self.net(level, band_pixels=self.conf["band_pixels"])
        return self.in_bands(self.net, level, self.band_margin)

    def maxima(self, score: torch.Tensor) -> torch.Tensor:
        """``strict_maxima`` computed band by band (exact: a band sees the window's rows beyond it)."""
        size = self.conf["nms_size"]
        return self.in_bands(lambda part: strict_maxima(part, size), score, size // 2)

    def keep(self, score: torch.Tensor, maxima: torch.Tensor) -> torch.Tensor:
        """Where a level's ``score`` (B,1,h,w) gives a keypoint: its strict ``maxima``, above the score
        threshold, outside the border. Written with index comparisons so that ONNX export traces it."""
        c = self.conf
        nh, nw = score.shape[-2:]
        bd = c["border"]
        v = torch.arange(nh, device=score.device)
        u = torch.arange(nw, device=score.device)
        inside = ((v >= bd) & (v < nh - bd))[:, None] & ((u >= bd) & (u < nw - bd))[None, :]
        return maxima & (score > c["score_threshold"]) & inside

    def scale(self, fx, fy):
        """Keypoint radius on a level with factors fx, fy (floats, or traced scalars in export)."""
        return 0.5 * (fx + fy) * self.conf["scale_mult"]

    def gain(self, fx, fy):
        """The factor of a level's scores before the global top-k: its downsampling factor to the
        power ``level_gamma`` (1 when it is 0, the paper's raw responses)."""
        return (0.5 * (fx + fy)) ** self.conf["level_gamma"]

    def candidates(self, level: torch.Tensor, fx: float, fy: float, mask: torch.Tensor | None) -> torch.Tensor:
        """Maxima of one pyramid level of one image as rows (x, y, scale, score), row-major order."""
        score = self.response(level)
        c = self.conf
        if eager_on_cpu(score) and score.dtype == torch.float32:
            v, u = local_maxima(score[0, 0], c["nms_size"], c["border"], c["score_threshold"])  # row-major
        else:
            _, _, v, u = torch.nonzero(self.keep(score, self.maxima(score)), as_tuple=True)  # row-major
        if mask is not None:
            inside = self.level_mask(mask, tuple(score.shape[-2:]), fx, fy)[0, 0, v, u]
            v, u = v[inside], u[inside]
        s = score[0, 0, v, u] * self.gain(fx, fy)
        du, dv = subpixel_offsets(score[0, 0], v, u) if c["subpixel"] else (0.0, 0.0)
        ox, oy = c["offset"]
        x = self.map(u.double() + du + ox, fx)
        y = self.map(v.double() + dv + oy, fy)
        scale = torch.full_like(x, self.scale(fx, fy))
        return torch.stack([x, y, scale, s.double()], 1)


class KeyNetDetector(nn.Module):
    """Key.Net keypoints with scale and score.

    Args:
        weights: a weights file (keynet's own or kornia's layout); None takes the package's shipped
            weights for ``model``.
        network: use this response network (any module mapping (B,1,H,W) to (B,1,H,W)) instead
            of loading ``weights``.
        model: ``"keynet"`` or ``"tiny"`` (Tiny-Key.Net).
        device: where the network runs.
        **conf: overrides of ``default_conf``.

    Example:
        >>> det = KeyNetDetector(num_keypoints=1024)
        >>> out = det.detect("photo.jpg")
        >>> out["keypoints"].shape, out["scales"].shape, out["scores"].shape
    """

    default_conf: dict[str, Any] = {
        "num_keypoints": 2048,  # at most this many per image, the best over all levels
        "up_levels": 1,  # levels upsampled above full resolution
        "pyramid_levels": 4,  # levels downsampled below full resolution
        "scale_factor": math.sqrt(2),  # between successive levels
        "nms_size": 15,  # window of the strict-maximum test, level pixels
        "border": 15,  # no keypoint within this many level pixels of a level's edge
        "score_threshold": 0.0,  # keep responses strictly above it
        "scale_mult": 22.0,  # keypoint radius at full resolution, pixels
        "compat": None,  # None, or "kornia" for kornia's level-to-image mapping
        "band_pixels": 2**22,  # larger levels run the network and the suppression in row bands (memory)
        "precision": "float32",  # or "bfloat16" for Key.Net's learned convolutions (see FastKeyNet)
        "subpixel": False,  # refine positions to the response's parabola vertex (not in the paper)
        # Scores times (level downsampling factor) ** level_gamma before the global top-k, as the
        # sigma ** gamma of scale-normalised detectors; 0: the paper's raw responses (not in the paper).
        "level_gamma": 0.0,
        # (dx, dy) level pixels added to every keypoint before it is mapped to the image, e.g. to cancel
        # a network's measured position bias (``keynet.eval.calibration``; not in the paper).
        "offset": (0.0, 0.0),
        # Each image is scaled so that its gray values have this standard deviation before detection,
        # which makes the keypoints independent of the exposure's gain (0: off, the paper's; not in the
        # paper). The shipped weights were trained on photos whose median is 0.21.
        "input_std": 0.0,
    }
    def __init__(
        self,
        weights: str | Path | None = None,
        model: str = "keynet",
        device: str | torch.device = "cpu",
        network: nn.Module | None = None,
        **conf: Any,
    ) -> None:
        super().__init__()
        unknown = set(conf) - set(self.default_conf)
        if unknown:
            raise TypeError(f"unknown option(s) {sorted(unknown)}; options are {sorted(self.default_conf)}")
        self.conf = {**self.default_conf, **conf}
        c = self.conf
        if c["compat"] not in (None, "kornia"):
            raise ValueError(f"compat must be None or 'kornia', got {c['compat']!r}")
        if int(c["num_keypoints"]) < 1:
            raise ValueError(f"num_keypoints must be positive, got {c['num_keypoints']}")
        if c["score_threshold"] < 0:
            raise ValueError("score_threshold must be >= 0: the response is non-negative and 0 means 'none'")
        if c["nms_size"] < 1 or c["nms_size"] % 2 == 0:
            raise ValueError(f"nms_size must be a positive odd number, got {c['nms_size']}")
        if c["precision"] not in COMPUTE_DTYPES:
            raise ValueError(f"precision must be one of {sorted(COMPUTE_DTYPES)}, got {c['precision']!r}")
        try:
            offset = tuple(float(v) for v in c["offset"])
        except (TypeError, ValueError):
            offset = ()
        if len(offset) != 2 or not all(map(math.isfinite, offset)):
            raise ValueError(f"offset must be two finite numbers (dx, dy) in level pixels, got {c['offset']!r}")
        c["offset"] = offset
        c["input_std"] = checked_input_std(c["input_std"])
        net = network if network is not None else load_model(weights, model)
        if c["precision"] != "float32" and not isinstance(net, KeyNet):
            raise ValueError(f"precision={c['precision']!r} applies to a Key.Net network, not to {type(net).__name__}")
        if c["precision"] == "bfloat16" and torch.device(device).type == "cpu" and not native_bfloat16():
            warnings.warn("precision='bfloat16': this CPU has no native bfloat16 (AVX512-BF16 or AMX), so it is "
                          "emulated and slower than float32", RuntimeWarning, stacklevel=2)
        # A KeyNet runs through its inference form (BatchNorm folded, faster final conv): the same
        # function up to float rounding. Later changes to `net`'s weights are not seen.
        self.net = FastKeyNet(net, COMPUTE_DTYPES[c["precision"]]) if isinstance(net, KeyNet) else net
        self.net.eval()
        self.scorer = LevelScorer(self.net, self.conf)
        # Follows .to(device) like a parameter would, also for a network without parameters.
        self.register_buffer("_device_probe", torch.zeros(0), persistent=False)
        self.to(device)

    @property
    def device(self) -> torch.device:
        return self._device_probe.device

    @property
    def min_image_size(self) -> int:
        """Smallest image side that can hold a keypoint at full resolution."""
        return max(2 * self.conf["border"] + 1, getattr(self.net, "min_input_size", 1))

    def _to_batch(self, image: ImageInput) -> tuple[torch.Tensor, bool]:
        """A (B,1,H,W) float32 tensor in [0, 1] on the detector's device, and whether the input was a batch."""
        batch, batched = to_image_batch(image, self.min_image_size)
        return batch.to(self.device), batched

    def _levels(self, image: torch.Tensor) -> list[tuple[torch.Tensor, float, float]]:
        """Pyramid levels ``(tensor, fx, fy)``, upsampled first, as kornia's ``MultiResolutionDetector``.
        Levels too small to hold a keypoint are left out (they could only return nothing)."""
        pyramid = _Pyramid(self, image)
        return [(pyramid.level(j), *pyramid.factors(j)) for j in range(len(pyramid))]

    def _to_mask(self, mask: Any, image: torch.Tensor) -> torch.Tensor:
        m = torch.as_tensor(mask)
        b, _, h, w = image.shape
        if m.ndim == 2:
            m = m[None, None].expand(b, 1, h, w)
        if tuple(m.shape) != (b, 1, h, w):
            raise ValueError(f"mask must be (H,W) or (B,1,H,W) matching the image {(b, 1, h, w)}, got {tuple(m.shape)}")
        return (m != 0).to(image.device)

    @torch.inference_mode()
    def detect(self, image: ImageInput, mask: Any = None, return_lafs: bool = False):
        """Detect keypoints.

        Args:
            image: a path; an (H, W) or (H, W, 3|4) RGB(A) numpy array, uint8/uint16 or float in [0, 1];
                or a float tensor in [0, 1] of shape (H, W), (1, H, W) or (B, 1, H, W).
            mask: optional (H, W) or (B, 1, H, W) array; a keypoint is kept only where the mask is
                nonzero at the image pixel nearest to it.
            return_lafs: also return ``lafs`` (N, 2, 3), kornia's local affine frames.

        Returns:
            For a (B, 1, H, W) tensor, a list of B dicts; otherwise one dict. Each holds float32 tensors
            ``keypoints`` (N, 2) as (x, y), ``scales`` (N,) and ``scores`` (N,), sorted by decreasing
            score, N <= num_keypoints (fewer when the image has fewer maxima). Ties in score are broken
            by level (upsampled first, then finer to coarser) and then by row-major pixel order.
        """
        with caller_single_threaded():  # the levels' tasks still use all threads
            batch, batched = self._to_batch(image)
            masks = None if mask is None else self._to_mask(mask, batch)
            results = self._detect_batch(batch, masks)
            if return_lafs:
                for r in results:
                    r["lafs"] = keypoints_to_lafs(r["keypoints"], r["scales"])
        return results if batched else results[0]

    def _pyramid_level_candidates(self, pyramid: _Pyramid, j: int, mask: torch.Tensor | None) -> torch.Tensor:
        return self.scorer.candidates(pyramid.level(j), *pyramid.factors(j), mask)

    def _detect_batch(self, batch: torch.Tensor, masks: torch.Tensor | None) -> list[dict[str, torch.Tensor]]:
        # One task per (image, level): images of a batch are independent, and one image at a time keeps
        # the network's bands small enough for the caches (a batched band is B times larger).
        # Each task makes its own level (``_Pyramid``): the threads build the pyramid, not the caller.
        pyramids = [_Pyramid(self, batch[i : i + 1]) for i in range(batch.shape[0])]
        keys = [(i, j) for i, pyramid in enumerate(pyramids) for j in range(len(pyramid))]
        # Largest level first, so that the threads finish together (see keynet.parallel).
        keys.sort(key=lambda key: -math.prod(pyramids[key[0]].shapes[key[1]]))
        tasks = [partial(self._pyramid_level_candidates, pyramids[i], j, None if masks is None else masks[i : i + 1])
                 for i, j in keys]
        found = dict(zip(keys, run_tasks(tasks)))
        out = []
        for i, pyramid in enumerate(pyramids):
            by_level = [found[(i, j)] for j in range(len(pyramid))]  # level order: tie-breaks
            rows = torch.cat(by_level) if by_level else torch.zeros(0, 4, dtype=torch.float64)
            order = torch.sort(rows[:, 3], descending=True, stable=True).indices[: self.conf["num_keypoints"]]
            rows = rows[order].float()
            out.append({"keypoints": rows[:, :2].contiguous(), "scales": rows[:, 2].contiguous(), "scores": rows[:, 3].contiguous()})
        return out


class _Pyramid:
    """One image's detection pyramid (see ``KeyNetDetector._levels``), each level made on first use.

    The level sizes are known up front, so detection can hand out one task per level at once: each
    task asks for its own level, and the threads build the pyramid (the upsampled chain in one, the
    downsampled chain level by level in another) instead of the caller before they start. A lock
    per chain makes each level once.
    """

    def __init__(self, det: KeyNetDetector, image: torch.Tensor) -> None:
        c = det.conf
        f = c["scale_factor"]
        self.image = contrast_normalised(image, c["input_std"])
        self.size = tuple(image.shape[-2:])
        h, w = self.size
        # (h, w) of each level, upsampled first
        self.shapes = [(upsampled_side(h, f ** (1 + i)), upsampled_side(w, f ** (1 + i)))
                       for i in range(c["up_levels"])]
        self.num_up = len(self.shapes)
        for i in range(c["pyramid_levels"] + 1):
            if i > 0:
                h, w = downsampled_side(h, f), downsampled_side(w, f)
            if min(h, w) < det.min_image_size:
                break
            self.shapes.append((h, w))
        self._made: list[torch.Tensor | None] = [None] * len(self.shapes)
        self._locks = (threading.Lock(), threading.Lock())  # downsampled chain, upsampled chain

    def __len__(self) -> int:
        return len(self.shapes)

    def factors(self, j: int) -> tuple[float, float]:
        """(fx, fy): image pixels per pixel of level j."""
        (h, w), (nh, nw) = self.size, self.shapes[j]
        return w / nw, h / nh

    def level(self, j: int) -> torch.Tensor:
        """Level j, (1,1,h_j,w_j)."""
        with self._locks[j < self.num_up]:
            return self._make(j)

    def _make(self, j: int) -> torch.Tensor:
        if self._made[j] is None:
            if j < self.num_up:  # each from the previous upsampled level, as kornia does
                source = self.image if j == 0 else self._make(j - 1)
                self._made[j] = F.interpolate(source, size=self.shapes[j], mode="bilinear", align_corners=False)
            elif j == self.num_up:
                self._made[j] = self.image
            else:
                self._made[j] = pyrdown(self._make(j - 1), self.shapes[j])
        return self._made[j]
