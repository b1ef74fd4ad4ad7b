"""Key.Net's training loss: the index-proposal (IP) layer and the multi-scale M-SIP loss.

Conventions: score maps are (B, 1, H, W), non-negative; coordinates are (x, y) with x right, y down
and pixel centres at integers; homographies are (B, 3, 3) and map view-a pixels to view-b pixels,
``x_b ~ H @ [x_a, y_a, 1]``. Windows are the non-overlapping N x N tiles of the map starting at its
top-left corner; rows/columns beyond the last whole window are not used (as the released code).

For one window size N and the direction a -> b (Sec. 3.3 of the paper, and the released code):

- The IP layer proposes one soft keypoint per window of view a: the soft-argmax of the window with
  weights ``exp(R / m) - 1``, where m is the window's maximum (without gradient). Dividing by m makes
  the proposal independent of the response's overall scale, which the loss does not otherwise fix.
- The target of that window is the hard argmax, inside the same window, of view b's response warped
  into view a (bilinear, without gradient): the other view's window maximum, moved by the homography.
- Both maps are zeroed within ``border`` pixels of their edges and where the other view does not see
  (the visibility mask: the other view's border mask warped into this view).
- The squared distance, in units of N, is weighted per window by ``100 * softmax`` over the
  windows of their soft scores (``coordinate_weighting``); the soft scores are divided by the map's
  largest one first, so the weighting too is independent of the response scale (the released code
  used raw scores, whose softmax turns one-hot as the scale grows). Windows with no valid target or
  an all-zero response carry no weight.
- The loss of the level is ``1000 * mean over windows`` (the released code's scaling); a -> b and
  b -> a are averaged. M-SIP sums the levels with weights (256, 64, 16, 4, 1) for N = (8, ..., 40).

Not in the paper: ``sparsity_loss`` anchors the response's zero level, and ``scale_selection_loss``
scores the pyramid level each keypoint fires on (``keynet train --sparsity`` and ``--scale-weight``).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

MSIP_SIZES: tuple[int, ...] = (8, 16, 24, 32, 40)
MSIP_WEIGHTS: tuple[float, ...] = (256.0, 64.0, 16.0, 4.0, 1.0)
_EPS = 1e-6


def _pixel_grid(h: int, w: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, 1, h, w) maps of the x and y coordinates of each pixel."""
    ys = torch.arange(h, device=like.device, dtype=like.dtype)
    xs = torch.arange(w, device=like.device, dtype=like.dtype)
    return xs.expand(h, w)[None, None], ys[:, None].expand(h, w)[None, None]


def ip_layer(score: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Index proposal: one soft keypoint per n x n window.

    Args:
        score: (B, 1, H, W) non-negative response.
        n: window size.

    Returns:
        ``coords`` (B, H//n, W//n, 2) soft-argmax (x, y) in map pixels, and ``soft_scores``
        (B, H//n, W//n), the same soft average of the score itself. A window that is all zero has
        soft score 0 and meaningless coordinates.
    """
    hh, ww = score.shape[-2] // n, score.shape[-1] // n
    s = score[..., : hh * n, : ww * n]
    peak = F.max_pool2d(s.detach(), n)
    peak = peak.repeat_interleave(n, -2).repeat_interleave(n, -1)
    weights = torch.exp(s / (peak + _EPS)) - 1.0  # 0 where the score is 0, e - 1 at the maximum
    xx, yy = _pixel_grid(hh * n, ww * n, s)
    # Window sums of w, w*x, w*y, w*s in one pooling pass.
    sums = F.avg_pool2d(torch.cat([weights, weights * xx, weights * yy, weights * s], 1), n) * float(n * n)
    norm = sums[:, 0] + _EPS
    coords = torch.stack([sums[:, 1] / norm, sums[:, 2] / norm], -1)
    return coords, sums[:, 3] / norm


def window_argmax(score: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Hard argmax per n x n window: ``coords`` (B, H//n, W//n, 2) as (x, y) and ``values`` (B, H//n, W//n)."""
    hh, ww = score.shape[-2] // n, score.shape[-1] // n
    values, idx = F.max_pool2d(score[..., : hh * n, : ww * n], n, return_indices=True)
    idx = idx[:, 0]
    coords = torch.stack([idx % (ww * n), idx // (ww * n)], -1).to(score.dtype)
    return coords, values[:, 0]


def _pull_back(h_src_to_dst: torch.Tensor, size: tuple[int, int], like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each pixel of a ``size`` (h, w) dst view lies in the source, ``H^-1 @ x_dst``:
    (B, h*w, 2) as (x, y), and the third homogeneous coordinate of ``H^-1 @ x_dst``, (B, h*w)."""
    hd, wd = size
    dtype, device = like.dtype, like.device
    yy, xx = torch.meshgrid(torch.arange(hd, device=device, dtype=dtype), torch.arange(wd, device=device, dtype=dtype), indexing="ij")
    pts = torch.stack([xx, yy, torch.ones_like(xx)], -1).reshape(1, -1, 3)  # (1, hd*wd, 3)
    h_inv = torch.linalg.inv(h_src_to_dst.to(torch.float64)).to(dtype)  # (B, 3, 3)
    src = pts @ h_inv.transpose(1, 2)
    return src[..., :2] / src[..., 2:].clamp_min(_EPS), src[..., 2]


def _normalised(coord: torch.Tensor, side: int) -> torch.Tensor:
    """Pixel coordinate to grid_sample's [-1, 1] with align_corners=True (-1 and +1 are the centres
    of the first and last pixels)."""
    return 2.0 * coord / max(side - 1, 1) - 1.0


def warp_to(image: torch.Tensor, h_src_to_dst: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear warp of (B, C, h, w) ``image`` into a (B, C, size) view with ``x_dst ~ H @ x_src``.

    Each dst pixel samples the source at ``H^-1 @ x_dst``; outside the source it reads 0.
    """
    hs, ws = image.shape[-2:]
    src, _ = _pull_back(h_src_to_dst, size, image)
    grid = torch.stack([_normalised(src[..., 0], ws), _normalised(src[..., 1], hs)], -1)
    return F.grid_sample(image, grid.reshape(image.shape[0], *size, 2), mode="bilinear", padding_mode="zeros", align_corners=True)


def warp_stack_to(stack: torch.Tensor, h_src_to_dst: torch.Tensor, size: tuple[int, int], level_factor: float) -> torch.Tensor:
    """Warp a (B, L, h, w) stack of pyramid levels ``level_factor`` apart (each resampled to the
    view's size) into a (B, L, size) dst stack, moving along the levels by the local zoom.

    Level l of dst at x_dst reads the source at ``H^-1 @ x_dst`` and at level
    ``l + log(zoom) / log(level_factor)``, trilinearly: where the source shows a structure ``zoom``
    times larger, it shows it at the dst level's size that many levels further down. Outside the
    source's levels or pixels it reads 0.
    """
    b, levels, hs, ws = stack.shape
    src, w = _pull_back(h_src_to_dst, size, stack)
    # The zoom of the source relative to dst: the square root of the Jacobian determinant of
    # x_dst -> H^-1 x_dst, which is det(H^-1) / w^3 = 1 / (det(H) w^3).
    det = torch.linalg.det(h_src_to_dst.to(torch.float64)).abs().to(stack.dtype)[:, None]
    zoom = (1.0 / (det * w.abs().clamp_min(_EPS) ** 3)).sqrt()
    shift = torch.log(zoom.clamp_min(_EPS)) / math.log(level_factor)  # (B, N)
    level = torch.arange(levels, device=stack.device, dtype=stack.dtype)[None, :, None] + shift[:, None]  # (B, L, N)
    grid = torch.stack([_normalised(src[..., 0], ws)[:, None].expand_as(level),
                        _normalised(src[..., 1], hs)[:, None].expand_as(level), _normalised(level, levels)], -1)
    out = F.grid_sample(stack[:, None], grid.reshape(b, levels, *size, 3), mode="bilinear", padding_mode="zeros", align_corners=True)
    return out[:, 0]


def border_mask(shape: tuple[int, int, int, int], border: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(B, 1, H, W) ones with a frame of ``border`` zero pixels."""
    mask = torch.zeros(shape, device=device, dtype=dtype)
    h, w = shape[-2:]
    mask[..., border : h - border, border : w - border] = 1.0
    return mask


def _one_way_maps(
    score_a: torch.Tensor, score_b: torch.Tensor, h_ab: torch.Tensor, border: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """View a's masked response (with gradient) and view b's response warped into a (without).

    Both (B, 1, H, W): zero within ``border`` of a's edges and where b does not see (b's border mask
    pulled back into a; ``x_b = H x_a``, so the pull-back warps by ``H^-1``).
    """
    size = (score_a.shape[-2], score_a.shape[-1])
    mask_a = border_mask(tuple(score_a.shape), border, score_a.device, score_a.dtype)
    mask_b = border_mask(tuple(score_b.shape), border, score_b.device, score_b.dtype)
    h_ba = torch.linalg.inv(h_ab.to(torch.float64)).to(score_a.dtype)
    visible_a = mask_a * warp_to(mask_b, h_ba, size)
    target_map = warp_to(score_b.detach() * mask_b, h_ba, size) * visible_a
    return score_a * visible_a, target_map


def ip_loss(score: torch.Tensor, target_map: torch.Tensor, n: int, temperature: float = 1.0) -> torch.Tensor:
    """The IP loss (scalar) of the proposals of ``score`` against the window maxima of ``target_map``.

    Args:
        score: (B, 1, H, W) masked response of this view (gradient flows into it).
        target_map: (B, 1, H, W) the other view's response warped into this view, masked.
        n: window size.
        temperature: of the softmax over the windows' normalised soft scores; below 1 it trains the
            strongest windows more (the ones a top-k detector keeps).
    """
    coords, soft_scores = ip_layer(score, n)
    target, target_value = window_argmax(target_map, n)
    b, hh, ww = soft_scores.shape
    ss = soft_scores.detach().reshape(b, -1)
    ss = ss / (ss.amax(-1, keepdim=True) + _EPS)
    weights = 100.0 * torch.softmax(ss / temperature, -1).reshape(b, hh, ww)
    valid = (target_value > 0) & (soft_scores.detach() > 0)
    dist = (((coords - target) / n) ** 2).sum(-1)
    return 1000.0 * (weights * valid * dist).mean()


def sparsity_loss(score: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``mean(relu(R)) / max(R)`` per (1, H, W) response ``R`` (the maximum
    without gradient): the positive mass of each map relative to its peak, in [0, 1]. Like M-SIP it
    does not change when the response is scaled, and added to it with a weight it pulls the response
    to zero away from the keypoints, which M-SIP alone leaves free (it only scores window maxima)."""
    peak = score.detach().flatten(1).amax(1).clamp_min(_EPS)
    return (F.relu(score).flatten(1).mean(1) / peak).mean()


def msip_loss(
    score_a: torch.Tensor,
    score_b: torch.Tensor,
    h_ab: torch.Tensor,
    sizes: Sequence[int] = MSIP_SIZES,
    level_weights: Sequence[float] = MSIP_WEIGHTS,
    border: int = 16,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, dict[int, float]]:
    """M-SIP: symmetric IP loss summed over window sizes (scalar), and each level's value.

    Args:
        score_a, score_b: (B, 1, H, W) non-negative responses of the two views (same size).
        h_ab: (B, 3, 3) homography from a's pixels to b's pixels.
        sizes, level_weights: window sizes and their weights (defaults: the paper's).
        border: ignored frame in pixels (16 in the released training code).
        temperature: of the window weighting, see ``ip_loss``.
    """
    if len(sizes) != len(level_weights):
        raise ValueError("sizes and level_weights must have the same length")
    if score_a.shape != score_b.shape:
        raise ValueError(f"both views must have the same shape, got {tuple(score_a.shape)} and {tuple(score_b.shape)}")
    h_ba = torch.linalg.inv(h_ab.to(torch.float64)).to(h_ab.dtype)
    a, target_a = _one_way_maps(score_a, score_b, h_ab, border)
    b, target_b = _one_way_maps(score_b, score_a, h_ba, border)
    total = score_a.new_zeros(())
    levels: dict[int, float] = {}
    for n, w in zip(sizes, level_weights):
        level = 0.5 * (ip_loss(a, target_a, n, temperature) + ip_loss(b, target_b, n, temperature))
        levels[n] = float(level.detach())
        total = total + w * level
    return total, levels


def scale_selection_loss(
    stack_a: torch.Tensor,
    stack_b: torch.Tensor,
    h_ab: torch.Tensor,
    level_factor: float,
    window: int = 8,
    border: int = 16,
    temperature: float = 0.05,
) -> torch.Tensor:
    """Cross-entropy over the pyramid levels at each view's keypoints (scalar, mean of both ways).

    At the strongest pixel of each ``window`` x ``window`` tile of view a (its response maximum over
    the levels), the softmax over levels of a's responses there, each divided by ``temperature``
    times the view's largest response, is scored against the level where view b, warped into a and
    moved along the levels by the local zoom (``warp_stack_to``), responds most within one pixel.
    So a structure is to fire on the level that follows its size from one view to the other, which
    the per-map M-SIP leaves free. Levels that b does not show at a pixel are left out of its
    softmax, and tiles with fewer than two such levels, or within ``border`` of a's edges, carry no
    weight.

    Args:
        stack_a, stack_b: (B, L, H, W) responses to L pyramid levels ``level_factor`` apart, each
            resampled to the view's size (``keynet.train.loop.response_stack``).
        h_ab: (B, 3, 3) homography from a's pixels to b's.
        level_factor: scale between successive levels (the detector's, sqrt(2)).
        window: tile side, pixels: one keypoint per tile.
        border: ignored frame, pixels, in both views.
        temperature: of the softmax, relative to the view's largest response; small values make
            a difference of a few percent between levels decide.
    """
    h_ba = torch.linalg.inv(h_ab.to(torch.float64)).to(h_ab.dtype)
    return 0.5 * (_level_cross_entropy(stack_a, stack_b, h_ba, level_factor, window, border, temperature)
                  + _level_cross_entropy(stack_b, stack_a, h_ab, level_factor, window, border, temperature))


def _level_cross_entropy(stack_a: torch.Tensor, stack_b: torch.Tensor, h_ba: torch.Tensor, level_factor: float,
                         window: int, border: int, temperature: float) -> torch.Tensor:
    """One way of ``scale_selection_loss``: a's levels scored against b's, ``h_ba`` mapping b's pixels to a's."""
    size = (stack_a.shape[-2], stack_a.shape[-1])
    mask_b = border_mask(tuple(stack_b.shape), border, stack_b.device, stack_b.dtype)
    seen = warp_stack_to(mask_b, h_ba, size, level_factor) > 0.999  # (B, L, H, W): what b shows of a's levels
    target = F.max_pool2d(warp_stack_to(stack_b.detach(), h_ba, size, level_factor), 3, 1, 1)
    target = target.masked_fill(~seen, -math.inf).argmax(1)  # (B, H, W)
    inside = border_mask((stack_a.shape[0], 1, *size), border, stack_a.device, stack_a.dtype)[:, 0] > 0
    valid = inside & (seen.sum(1) >= 2)  # at least two levels to choose from
    peak = stack_a.detach().amax(1)  # (B, H, W)
    hh, ww = size[0] // window, size[1] // window
    _, idx = F.max_pool2d(peak.masked_fill(~valid, -math.inf)[:, None, : hh * window, : ww * window], window, return_indices=True)
    idx = idx.flatten(1)  # index into the (hh * window, ww * window) crop
    pick = idx // (ww * window) * size[1] + idx % (ww * window)  # (B, T): each tile's keypoint, flat
    levels = stack_a.shape[1]
    logits = stack_a.flatten(2).gather(2, pick[:, None].expand(-1, levels, -1))  # (B, L, T)
    scale = peak.flatten(1).amax(1).clamp_min(_EPS)[:, None, None]  # the view's largest response
    shown = seen.flatten(2).gather(2, pick[:, None].expand(-1, levels, -1))
    logits = (logits / (temperature * scale)).masked_fill(~shown, -1e4)
    labels = target.flatten(1).gather(1, pick)
    ok = valid.flatten(1).gather(1, pick)
    ce = F.cross_entropy(logits, labels, reduction="none")
    return (ce * ok).sum() / ok.sum().clamp_min(1)
