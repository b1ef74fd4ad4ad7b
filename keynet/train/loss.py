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
        score: (B, L, H, W) non-negative response; L = 1 for one map, L > 1 for a stack of pyramid
            levels resampled to one size (``msip_loss``'s scale-space form), whose windows then span
            every level.
        n: window size.

    Returns:
        ``coords`` (B, H//n, W//n, 2) soft-argmax (x, y) in map pixels, with the level index as a
        third coordinate when L > 1, and ``soft_scores`` (B, H//n, W//n), the same soft average of
        the score itself. A window that is all zero has soft score 0 and meaningless coordinates.
    """
    hh, ww = score.shape[-2] // n, score.shape[-1] // n
    s = score[..., : hh * n, : ww * n]
    peak = F.max_pool2d(s.detach(), n).amax(1, keepdim=True)
    peak = peak.repeat_interleave(n, -2).repeat_interleave(n, -1)
    weights = torch.exp(s / (peak + _EPS)) - 1.0  # 0 where the score is 0, e - 1 at the maximum
    xx, yy = _pixel_grid(hh * n, ww * n, s)
    parts = [weights, weights * xx, weights * yy, weights * s]
    if s.shape[1] > 1:
        parts.append(weights * torch.arange(s.shape[1], device=s.device, dtype=s.dtype)[:, None, None])
    # Window sums (over the levels too) of w, w*x, w*y, w*s (and w*level) in one pooling pass.
    sums = F.avg_pool2d(torch.cat(parts, 1), n).unflatten(1, (len(parts), -1)).sum(2) * float(n * n)
    norm = sums[:, 0] + _EPS
    coords = torch.stack([sums[:, 1] / norm, sums[:, 2] / norm, *([sums[:, 4] / norm] if len(parts) > 4 else [])], -1)
    return coords, sums[:, 3] / norm


def window_argmax(score: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Hard argmax per n x n window of a (B, L, H, W) response (over its levels too when L > 1):
    ``coords`` (B, H//n, W//n, 2) as (x, y), with the level as a third coordinate when L > 1, and
    ``values`` (B, H//n, W//n). Ties between levels go to the lowest level."""
    hh, ww = score.shape[-2] // n, score.shape[-1] // n
    values, idx = F.max_pool2d(score[..., : hh * n, : ww * n], n, return_indices=True)
    values, level = values.max(1, keepdim=True)
    idx = idx.gather(1, level)[:, 0]
    coords = [idx % (ww * n), idx // (ww * n)] + ([level[:, 0]] if score.shape[1] > 1 else [])
    return torch.stack(coords, -1).to(score.dtype), values[:, 0]


def _pull_back(h_src_to_dst: torch.Tensor, size: tuple[int, int], like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each pixel of a ``size`` (h, w) dst view lies in the source, ``H^-1 @ x_dst``:
    (B, h*w, 2) as (x, y), and the local zoom of the source relative to dst there, (B, h*w): the
    square root of the Jacobian determinant of the map, ``|det M| / w^3`` for ``M = H^-1`` and
    ``w`` the third homogeneous coordinate (a structure of size r in dst has size zoom * r in src)."""
    hd, wd = size
    dtype, device = like.dtype, like.device
    yy, xx = torch.meshgrid(torch.arange(hd, device=device, dtype=dtype), torch.arange(wd, device=device, dtype=dtype), indexing="ij")
    pts = torch.stack([xx, yy, torch.ones_like(xx)], -1).reshape(1, -1, 3)  # (1, hd*wd, 3)
    h_inv = torch.linalg.inv(h_src_to_dst.to(torch.float64))  # (B, 3, 3)
    src = pts @ h_inv.to(dtype).transpose(1, 2)
    zoom = (torch.linalg.det(h_inv).abs().to(dtype)[:, None] / src[..., 2].abs().clamp_min(_EPS) ** 3).sqrt()
    return src[..., :2] / src[..., 2:].clamp_min(_EPS), zoom


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
    src, zoom = _pull_back(h_src_to_dst, size, stack)
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
    score_a: torch.Tensor, score_b: torch.Tensor, h_ab: torch.Tensor, border: int, level_factor: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """View a's masked response (with gradient) and view b's response warped into a (without).

    Both (B, L, H, W): zero within ``border`` of a's edges and where b does not see (b's border mask
    pulled back into a; ``x_b = H x_a``, so the pull-back warps by ``H^-1``). A stack of L > 1
    levels is warped along its levels too (``warp_stack_to``), where b's levels run out included.
    """
    size = (score_a.shape[-2], score_a.shape[-1])
    mask_a = border_mask((score_a.shape[0], 1, *size), border, score_a.device, score_a.dtype)
    mask_b = border_mask(tuple(score_b.shape), border, score_b.device, score_b.dtype)
    h_ba = torch.linalg.inv(h_ab.to(torch.float64)).to(score_a.dtype)
    if score_a.shape[1] > 1:
        def warp(x: torch.Tensor) -> torch.Tensor:
            return warp_stack_to(x, h_ba, size, level_factor)
    else:
        def warp(x: torch.Tensor) -> torch.Tensor:
            return warp_to(x, h_ba, size)
    visible_a = mask_a * warp(mask_b)
    target_map = warp(score_b.detach() * mask_b) * visible_a
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
    units = coords.new_tensor([n, n, 1.0][: coords.shape[-1]])  # x and y in windows, the level in levels
    dist = (((coords - target) / units) ** 2).sum(-1)
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
    level_factor: float | None = None,
) -> tuple[torch.Tensor, dict[int, float]]:
    """M-SIP: symmetric IP loss summed over window sizes (scalar), and each level's value.

    Args:
        score_a, score_b: (B, 1, H, W) non-negative responses of the two views (same size), or the
            scale-space form: (B, L, H, W) stacks of the responses to L pyramid levels
            ``level_factor`` apart, each resampled to the view's size. Then each window proposes one
            keypoint in (x, y, level), its target is the other view's maximum over the window and
            the levels, moved by the homography in position and by the local zoom in level, and the
            level error (in levels) adds to the position error (in windows).
        h_ab: (B, 3, 3) homography from a's pixels to b's pixels.
        sizes, level_weights: window sizes and their weights (defaults: the paper's).
        border: ignored frame in pixels (16 in the released training code).
        temperature: of the window weighting, see ``ip_loss``.
        level_factor: scale between the levels of a stack (required when L > 1).
    """
    if score_a.shape[1] > 1 and level_factor is None:
        raise ValueError(f"a stack of {score_a.shape[1]} levels needs level_factor, the scale between its levels")
    if len(sizes) != len(level_weights):
        raise ValueError("sizes and level_weights must have the same length")
    if score_a.shape != score_b.shape:
        raise ValueError(f"both views must have the same shape, got {tuple(score_a.shape)} and {tuple(score_b.shape)}")
    h_ba = torch.linalg.inv(h_ab.to(torch.float64)).to(h_ab.dtype)
    a, target_a = _one_way_maps(score_a, score_b, h_ab, border, level_factor)
    b, target_b = _one_way_maps(score_b, score_a, h_ba, border, level_factor)
    total = score_a.new_zeros(())
    levels: dict[int, float] = {}
    for n, w in zip(sizes, level_weights):
        level = 0.5 * (ip_loss(a, target_a, n, temperature) + ip_loss(b, target_b, n, temperature))
        levels[n] = float(level.detach())
        total = total + w * level
    return total, levels

