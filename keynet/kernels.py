"""Compiled (numba) passes of ``FastKeyNet``: the handcrafted maps and the bilinear resize.

The 10 handcrafted maps are computed in one pass per image and written channels-last.

``inference.handcrafted_maps`` builds the maps from about 30 whole-image PyTorch operations (pads,
pair sums, differences, products, a concatenation), and the first convolution then reorders the
10 channel-first maps to channels-last. Here numba computes the same values with the same float32
operations in the same order, pixel by pixel, and writes each pixel's 10 values next to each other:
the result equals ``handcrafted_maps`` bit for bit (tested) and is already in the layout oneDNN's
convolution reads.

The in-network levels' features are resized (rows, then columns, in one pass per output row)
from channels-last memory, where the row and column gathers and lerps of PyTorch took three passes
over the upsampled features.

The functions release the GIL, so ``keynet.parallel`` runs bands side by side.
"""

from __future__ import annotations

import numba
import numpy as np
import torch


@numba.njit(nogil=True, cache=True)
def _pad_replicate(a: np.ndarray, p: np.ndarray) -> None:
    """p (H+2, W+2) = a (H, W) with its border rows and columns repeated once."""
    h, w = a.shape
    for r in range(h + 2):
        src = a[min(max(r - 1, 0), h - 1)]
        row = p[r]
        row[0] = src[0]
        row[1 : w + 1] = src
        row[w + 1] = src[w - 1]


@numba.njit(nogil=True, cache=True)
def _sobel8(p: np.ndarray, dx: np.ndarray, dy: np.ndarray) -> None:
    """8 x the Sobel derivatives of the padded ``p`` into ``dx``, ``dy`` (H, W), with the pair sums
    of ``inference._sobel8`` in its order."""
    h, w = dx.shape
    for r in range(h):
        top, mid, bot = p[r], p[r + 1], p[r + 2]
        for c in range(w):
            right = (top[c + 2] + mid[c + 2]) + (mid[c + 2] + bot[c + 2])
            left = (top[c] + mid[c]) + (mid[c] + bot[c])
            dx[r, c] = right - left
            below = (bot[c] + bot[c + 1]) + (bot[c + 1] + bot[c + 2])
            above = (top[c] + top[c + 1]) + (top[c + 1] + top[c + 2])
            dy[r, c] = below - above


@numba.njit(nogil=True, cache=True)
def _maps(x: np.ndarray, out: np.ndarray) -> None:
    """x (B, H, W) float32 -> out (B, H, >= W, 10) float32, the maps of ``handcrafted_maps`` (columns
    of ``out`` beyond W are left as they are)."""
    b, h, w = x.shape
    f4 = np.float32
    p = np.empty((h + 2, w + 2), f4)
    dx, dy = np.empty((h, w), f4), np.empty((h, w), f4)
    dxx, dxy = np.empty((h, w), f4), np.empty((h, w), f4)
    dyx, dyy = np.empty((h, w), f4), np.empty((h, w), f4)
    for i in range(b):
        _pad_replicate(x[i], p)
        _sobel8(p, dx, dy)
        _pad_replicate(dx, p)
        _sobel8(p, dxx, dxy)
        _pad_replicate(dy, p)
        _sobel8(p, dyx, dyy)
        for r in range(h):
            o = out[i, r]
            for c in range(w):
                gx, gy, gxx, gyy, gxy = dx[r, c], dy[r, c], dxx[r, c], dyy[r, c], dxy[r, c]
                o[c, 0] = gx
                o[c, 1] = gy
                o[c, 2] = gx * gx
                o[c, 3] = gy * gy
                o[c, 4] = gx * gy
                o[c, 5] = gxy
                o[c, 6] = gxy * gxy
                o[c, 7] = gxx
                o[c, 8] = gyy
                o[c, 9] = gxx * gyy


def handcrafted_maps_channels_last(x: torch.Tensor, even_width: bool = False) -> torch.Tensor:
    """``inference.handcrafted_maps(x)`` for a float32 CPU tensor (B,1,H,W): (B,10,H,W) in
    channels-last memory; with ``even_width`` and an odd W, (B,10,H,W+1) with zeros in the last
    column."""
    b, _, h, w = x.shape
    out = torch.empty((b, h, w + (w % 2 if even_width else 0), 10), dtype=torch.float32)
    out[:, :, w:] = 0
    _maps(x[:, 0].contiguous().numpy(), out.numpy())
    return out.permute(0, 3, 1, 2)


@numba.njit(nogil=True, cache=True)
def _resize(f, i0, i1, wr, j0, j1, wc, out) -> None:
    """out[b, r, c] = bilinear sample of f (B, h, w, C) at rows (i0, i1, weight wr) and columns
    (j0, j1, weight wc): rows as ``torch.lerp``, then columns as ATen's bilinear resize."""
    nb, rows, cols, nc = out.shape
    tmp = np.empty((f.shape[2], nc), np.float32)
    one = np.float32(1)
    for b in range(nb):
        for r in range(rows):
            top, bot, t = f[b, i0[r]], f[b, i1[r]], wr[r]
            if abs(t) < 0.5:
                for j in range(f.shape[2]):
                    for ch in range(nc):
                        tmp[j, ch] = top[j, ch] + t * (bot[j, ch] - top[j, ch])
            else:
                for j in range(f.shape[2]):
                    for ch in range(nc):
                        tmp[j, ch] = bot[j, ch] - (bot[j, ch] - top[j, ch]) * (one - t)
            o = out[b, r]
            for c in range(cols):
                left, right, u1 = tmp[j0[c]], tmp[j1[c]], wc[c]
                u0 = one - u1
                for ch in range(nc):
                    o[c, ch] = u0 * left[ch] + u1 * right[ch]


def resize_channels_last(f: torch.Tensor, rows: tuple, cols: tuple) -> torch.Tensor:
    """Bilinear resize of a float32 channels-last CPU tensor f (B,C,h,w) to (B,C,R,W), given the
    source indices and weights of the output rows and columns (``inference._source_rows``), each a
    triple (i0, i1, weight) of 1-D tensors. The result is channels-last."""
    b, c = f.shape[:2]
    out = torch.empty((b, len(rows[0]), len(cols[0]), c), dtype=torch.float32)
    _resize(f.permute(0, 2, 3, 1).contiguous().numpy(), *(t.numpy() for t in (*rows, *cols)), out.numpy())
    return out.permute(0, 3, 1, 2)
