"""Compiled (numba) passes of ``FastKeyNet`` and ``KeyNetDetector`` on the CPU.

The 10 handcrafted maps are computed in one pass per image and written channels-last.
``inference.handcrafted_maps`` builds the maps from about 30 whole-image PyTorch operations (pads,
pair sums, differences, products, a concatenation), and the first convolution then reorders the
10 channel-first maps to channels-last. Here numba computes the same values with the same float32
operations in the same order, pixel by pixel, and writes each pixel's 10 values next to each other:
the result equals ``handcrafted_maps`` bit for bit (tested) and is already in the layout oneDNN's
convolution reads. The derivatives are made 32 rows at a time, so their scratch stays in the cache.

The final convolution reads the in-network levels' features resized to the image grid: ``_final``
makes each resized row once (rows as ``torch.lerp``, columns as ATen's bilinear resize), planar,
into a ring of the six rows that two output rows read, and sums the convolution there, without
storing the upsampled features or running a depthwise convolution and a channel sum.
``pyrdown`` blurs and resizes a pyramid level in one pass as well.

A first block of one 5x5 filter (Tiny-Key.Net's), where oneDNN fills one lane of its vectors, runs
together with the maps (``single_filter_block``); the detector's non-maxima suppression returns the
maxima's positions directly (``local_maxima``).

The functions release the GIL, so ``keynet.parallel`` runs bands side by side.
"""

from __future__ import annotations

import numba
import numpy as np
import torch


@numba.njit(nogil=True, cache=True, inline="always")
def _sobel_rows(a: np.ndarray, r: int) -> tuple:
    """Rows r - 1, r, r + 1 of ``a`` with the border rows repeated (replicate padding)."""
    return a[max(r - 1, 0)], a[r], a[min(r + 1, a.shape[0] - 1)]


# The Sobel passes below read the unpadded rows: the interior columns through slices shifted by
# 0, 1 and 2 (indices the compiler knows are not negative, so the loop vectorises), the two edge
# columns with their outer neighbour repeated. Sums are ``inference._sobel8``'s, in its order.


@numba.njit(nogil=True, cache=True)
def _sobel8_x(a: np.ndarray, dx: np.ndarray) -> None:
    """dx (H, W) = 8 x the Sobel x-derivative of ``a`` (H, W), border replicated."""
    h, w = a.shape
    for r in range(h):
        top, mid, bot = _sobel_rows(a, r)
        out = dx[r]
        for c in (0, w - 1):
            cl, cr = max(c - 1, 0), min(c + 1, w - 1)
            out[c] = ((top[cr] + mid[cr]) + (mid[cr] + bot[cr])) - ((top[cl] + mid[cl]) + (mid[cl] + bot[cl]))
        if w > 2:
            tl, tr, ml, mr, bl, br = top[: w - 2], top[2:], mid[: w - 2], mid[2:], bot[: w - 2], bot[2:]
            inner = out[1 : w - 1]
            for c in range(w - 2):
                inner[c] = ((tr[c] + mr[c]) + (mr[c] + br[c])) - ((tl[c] + ml[c]) + (ml[c] + bl[c]))


@numba.njit(nogil=True, cache=True)
def _sobel8_y(a: np.ndarray, dy: np.ndarray) -> None:
    """dy (H, W) = 8 x the Sobel y-derivative of ``a`` (H, W), border replicated."""
    h, w = a.shape
    for r in range(h):
        top, _, bot = _sobel_rows(a, r)
        out = dy[r]
        for c in (0, w - 1):
            cl, cr = max(c - 1, 0), min(c + 1, w - 1)
            out[c] = ((bot[cl] + bot[c]) + (bot[c] + bot[cr])) - ((top[cl] + top[c]) + (top[c] + top[cr]))
        if w > 2:
            tl, tc, tr, bl, bc, br = top[: w - 2], top[1 : w - 1], top[2:], bot[: w - 2], bot[1 : w - 1], bot[2:]
            inner = out[1 : w - 1]
            for c in range(w - 2):
                inner[c] = ((bl[c] + bc[c]) + (bc[c] + br[c])) - ((tl[c] + tc[c]) + (tc[c] + tr[c]))


@numba.njit(nogil=True, cache=True)
def _derivatives(a, dx, dy, dxx, dxy, dyy) -> None:
    """The first and second derivatives of ``a`` (H, W) as in ``inference.handcrafted_maps``."""
    _sobel8_x(a, dx)
    _sobel8_y(a, dy)
    _sobel8_x(dx, dxx)
    _sobel8_y(dx, dxy)
    _sobel8_y(dy, dyy)


# Rows of derivatives computed at a time: their scratch (about 20 floats a column) stays in the
# L2 cache, and is not allocated (and page-faulted) image-sized on every call.
_CHUNK_ROWS = 32


def _scratch(w: int) -> np.ndarray:
    """The scratch array of ``_chunk_derivatives`` for images w columns wide."""
    return np.empty((5, _CHUNK_ROWS + 4, w), np.float32)


@numba.njit(nogil=True, cache=True)
def _chunk_derivatives(a, lo, hi, d) -> int:
    """Derivatives (dx, dy, dxx, dxy, dyy) of rows [lo, hi) of ``a`` (H, W) into ``d`` (5, >=
    hi - lo + 4, W), hi - lo <= ``_CHUNK_ROWS``, equal to those of the whole image: computed from
    rows [lo - 2, hi + 2), the context the second derivatives read. Returns s0: image row m is at
    d[:, m - s0]."""
    h = a.shape[0]
    s0, s1 = max(0, lo - 2), min(h, hi + 2)
    n = s1 - s0
    _derivatives(a[s0:s1], d[0, :n], d[1, :n], d[2, :n], d[3, :n], d[4, :n])
    return s0


@numba.njit(nogil=True, cache=True)
def _maps(x: np.ndarray, out: np.ndarray, d: np.ndarray, bf16: bool) -> None:
    """x (B, H, W) float32 -> out (B, H, >= W, 10), the maps of ``handcrafted_maps`` (columns of
    ``out`` beyond W are left as they are): float32, or with ``bf16`` int16 holding them rounded to
    bfloat16; d: ``_scratch(W)``."""
    b, h, w = x.shape
    planar = np.empty((10, w), np.float32)  # one row of the maps, for bf16
    bits = planar.view(np.uint32)
    for i in range(b):
        for lo in range(0, h, _CHUNK_ROWS):
            hi = min(h, lo + _CHUNK_ROWS)
            s0 = _chunk_derivatives(x[i], lo, hi, d)
            for r in range(lo, hi):
                if not bf16:
                    _map_row(d, r - s0, out[i, r, :w].T, 0)  # (10, W) view of the row's (W, 10)
                    continue
                _map_row(d, r - s0, planar, 0)
                o = out[i, r]
                for c in range(w):
                    for ch in range(10):
                        # round to nearest even, as torch converts (the maps are finite)
                        v = bits[ch, c]
                        o[c, ch] = np.int16(np.uint16((v + np.uint32(0x7FFF) + ((v >> 16) & 1)) >> 16))


def handcrafted_maps_channels_last(x: torch.Tensor, even_width: bool = False, dtype: torch.dtype = torch.float32,
                                   border: int = 0, out: torch.Tensor | None = None) -> torch.Tensor:
    """``inference.handcrafted_maps(x, dtype)`` for a float32 CPU tensor (B,1,H,W), dtype float32 or
    bfloat16: (B,10,H,W) in channels-last memory; with ``even_width`` and an odd W, (B,10,H,W+1) with
    zeros in the last column; with ``border``, (B,10,H+2 border,W+2 border) with zeros around the
    maps (the zero padding of the convolution that reads them). ``out``: a contiguous (B, rows,
    columns, 10) tensor of that size and dtype to write them into."""
    b, _, h, w = x.shape
    bf16 = dtype == torch.bfloat16
    width = w + (w % 2 if even_width else 0)
    shape = (b, h + 2 * border, width + 2 * border, 10)
    if out is None:
        out = torch.empty(shape, dtype=dtype)
    if out.shape != shape or out.dtype != dtype or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous {dtype} tensor of shape {shape}")
    out = out.view(torch.int16) if bf16 else out
    zero_border(out, border)
    out[:, :, border + w : border + width] = 0
    _maps(x[:, 0].contiguous().numpy(), out[:, border : border + h, border:].numpy(), _scratch(w), bf16)
    return (out.view(torch.bfloat16) if bf16 else out).permute(0, 3, 1, 2)


def zero_border(a: torch.Tensor, border: int) -> None:
    """Zeros in the outer ``border`` rows and columns of a (B, H, W, C) array."""
    if border:
        a[:, :border] = 0
        a[:, -border:] = 0
        a[:, :, :border] = 0
        a[:, :, -border:] = 0


@numba.njit(nogil=True, cache=True)
def _lerp_rows(top, bot, t, out) -> None:
    """out = top + t (bot - top) for rows (w,), as ``torch.lerp`` computes it (from the nearer end)."""
    if abs(t) < 0.5:
        for j in range(out.shape[0]):
            out[j] = top[j] + t * (bot[j] - top[j])
    else:
        one = np.float32(1)
        for j in range(out.shape[0]):
            out[j] = bot[j] - (bot[j] - top[j]) * (one - t)


@numba.njit(nogil=True, cache=True)
def _lerp_columns(src, j0, j1, wc, dst) -> None:
    """dst[c] = (1 - wc[c]) src[j0[c]] + wc[c] src[j1[c]] for rows of one channel, as ATen's bilinear
    resize."""
    one = np.float32(1)
    for c in range(dst.shape[0]):
        dst[c] = (one - wc[c]) * src[j0[c]] + wc[c] * src[j1[c]]


@numba.njit(nogil=True, cache=True)
def _reflect(j, n):
    """Index j of a reflect-padded axis of n >= 3 (-1 -> 1, n -> n - 2), for |overhang| <= 2."""
    j = abs(j)
    return 2 * (n - 1) - j if j > n - 1 else j


@numba.njit(nogil=True, cache=True)
def _blur_row(x, j, vert, dst) -> None:
    """Row j of x (H, W) blurred by the 5x5 binomial kernel with reflected borders, into dst (W,):
    the operations of ``inference.pyrdown`` in its order. vert: scratch (W + 4,)."""
    h, w = x.shape
    a, b, c, d, e = x[_reflect(j - 2, h)], x[_reflect(j - 1, h)], x[j], x[_reflect(j + 1, h)], x[_reflect(j + 2, h)]
    four, six = np.float32(4), np.float32(6)
    for u in range(w):
        vert[u + 2] = (a[u] + e[u]) + four * (b[u] + d[u]) + six * c[u]
    vert[0], vert[1], vert[w + 2], vert[w + 3] = vert[4], vert[3], vert[w], vert[w - 1]
    scale = np.float32(1.0 / 256.0)
    for u in range(w):
        dst[u] = ((vert[u] + vert[u + 4]) + four * (vert[u + 1] + vert[u + 3]) + six * vert[u + 2]) * scale


@numba.njit(nogil=True, cache=True)
def _pyrdown(x, i0, i1, wr, j0, j1, wc, out) -> None:
    """out (B, R, C) = x (B, H, W) blurred (``_blur_row``), then resized bilinearly. Each output
    row blurs only the two source rows it reads, kept in slots by parity for the next output row."""
    h, w = x.shape[1:]
    vert = np.empty(w + 4, np.float32)
    blurred = np.empty((2, w), np.float32)
    tmp = np.empty(w, np.float32)
    held = np.empty(2, np.int64)  # the source row in each slot
    for b in range(out.shape[0]):
        held[:] = -1
        for r in range(out.shape[1]):
            for j in (i0[r], i1[r]):
                if held[j % 2] != j:
                    _blur_row(x[b], j, vert, blurred[j % 2])
                    held[j % 2] = j
            _lerp_rows(blurred[i0[r] % 2], blurred[i1[r] % 2], wr[r], tmp)
            _lerp_columns(tmp, j0, j1, wc, out[b, r])


def pyrdown(x: torch.Tensor, rows: tuple, cols: tuple) -> torch.Tensor:
    """``inference.pyrdown`` of a float32 CPU tensor x (B,1,H,W), H, W >= 3, given the source indices
    and weights of the output rows and columns (``inference._source_rows``): (B,1,R,C)."""
    out = torch.empty((x.shape[0], len(rows[0]), len(cols[0])), dtype=torch.float32)
    _pyrdown(x[:, 0].contiguous().numpy(), *(t.numpy() for t in (*rows, *cols)), out.numpy())
    return out[:, None]


@numba.njit(nogil=True, cache=True)
def _single_filter(x, weight, bias, out, d) -> None:
    """out (B, H, W) = relu(bias + conv2d(maps(x), weight, zero padding 2)) for x (B, H, W) and
    weight (10, 5, 5), the maps as in ``_maps``; d: ``_scratch(W)``. The maps' rows are made one
    at a time into a ring of the 6 that two output rows read (``_conv_ready_rows``), and each output
    row sums its 250 products column-vectorised."""
    b, h, w = x.shape
    ring = np.zeros((6, 10, w + 4), np.float32)  # the maps' rows, as _add_conv_rows reads them
    for i in range(b):
        s0 = 0
        o = 0  # the next output row
        for m in range(h):
            if m % _CHUNK_ROWS == 0:
                s0 = _chunk_derivatives(x[i], m, min(h, m + _CHUNK_ROWS), d)
            _map_row(d, m - s0, ring[m % 6], 2)
            o = _conv_ready_rows(ring, weight, h, m, o, h, out[i], 0, np.float32(bias), True)


@numba.njit(nogil=True, cache=True)
def _conv_ready_rows(ring, weight, h, m, o, stop, out, o0, init, relu) -> int:
    """Output rows o, o + 1, ... (before ``stop``) of conv2d(rows, weight) (``_add_conv_rows``) whose
    input rows the ring holds once input row m is in it, two at a time: each out[row - o0] = init +
    the convolution (then clamped at 0 with ``relu``). Returns the next output row."""
    while o < stop:
        count = min(2, stop - o)
        if min(o + count + 1, h - 1) > m:  # the last input row they read is not in yet
            break
        rows = out[o - o0 : o - o0 + count]
        rows[:] = init
        _add_conv_rows(rows[0], rows[count - 1], ring, weight, o, h, count == 2)
        if relu:
            for r in range(count):  # by index: iterating over `rows` itself does not vectorise
                acc = rows[r]
                for c in range(acc.shape[0]):
                    acc[c] = max(acc[c], np.float32(0))
        o += count
    return o


@numba.njit(nogil=True, cache=True)
def _add_conv_rows(acc0, acc1, ring, weight, o, h, two) -> None:
    """acc0 (W,) += row o of conv2d(rows, weight (C, k, k)), k = 5 or 3, with zero padding k // 2,
    for an image of h rows of which ``ring`` (6, C, W + 4) holds rows o - 2 .. o + 3 (row m in slot
    m % 6, from column 2, zeros in the two columns at each side); with ``two`` also acc1 += row
    o + 1. The two output rows share k - 1 input rows, whose shifted columns are loaded once for
    both: 1.3-1.7x faster (in development, on 2-core AVX-512 VMs) than one output row at a time, which loads 5 values per 5 products."""
    k = weight.shape[1]
    r = k // 2
    for row in range(max(0, o - r), min(h, o + r + (2 if two else 1))):  # rows outside: zero padding
        t0 = row - o + r  # the kernel row that reads `row` for output row o
        t1 = t0 - 1  # for output row o + 1
        for ch in range(ring.shape[1]):
            src = ring[row % 6, ch, 2 - r :]
            if two and 0 <= t1 and t0 < k:
                if k == 5:
                    _add_taps_pair(acc0, acc1, src, weight[ch, t0], weight[ch, t1])
                else:
                    _add_taps3_pair(acc0, acc1, src, weight[ch, t0], weight[ch, t1])
            elif t0 < k:
                if k == 5:
                    _add_taps(acc0, src, weight[ch, t0])
                else:
                    _add_taps3(acc0, src, weight[ch, t0])
            elif k == 5:
                _add_taps(acc1, src, weight[ch, t1])
            else:
                _add_taps3(acc1, src, weight[ch, t1])


@numba.njit(nogil=True, cache=True, fastmath={"contract"})
def _add_taps3(acc, src, wt) -> None:
    """acc[c] += sum_d wt[d] * src[c + d] for the 3 taps of one kernel row."""
    w0, w1, w2 = wt[0], wt[1], wt[2]
    for c in range(acc.shape[0]):
        acc[c] += w0 * src[c] + w1 * src[c + 1] + w2 * src[c + 2]


@numba.njit(nogil=True, cache=True, fastmath={"contract"})
def _add_taps3_pair(acc0, acc1, src, wt0, wt1) -> None:
    """``_add_taps3`` of one source row into two accumulators with their own taps."""
    a0, a1, a2 = wt0[0], wt0[1], wt0[2]
    b0, b1, b2 = wt1[0], wt1[1], wt1[2]
    for c in range(acc0.shape[0]):
        s0, s1, s2 = src[c], src[c + 1], src[c + 2]
        acc0[c] += a0 * s0 + a1 * s1 + a2 * s2
        acc1[c] += b0 * s0 + b1 * s1 + b2 * s2


@numba.njit(nogil=True, cache=True, fastmath={"contract"})
def _add_taps(acc, src, wt) -> None:
    """acc[c] += sum_d wt[d] * src[c + d] for the 5 taps of one kernel row."""
    w0, w1, w2, w3, w4 = wt[0], wt[1], wt[2], wt[3], wt[4]
    for c in range(acc.shape[0]):
        acc[c] += w0 * src[c] + w1 * src[c + 1] + w2 * src[c + 2] + w3 * src[c + 3] + w4 * src[c + 4]


@numba.njit(nogil=True, cache=True, fastmath={"contract"})
def _add_taps_pair(acc0, acc1, src, wt0, wt1) -> None:
    """``_add_taps`` of one source row into two accumulators with their own taps."""
    a0, a1, a2, a3, a4 = wt0[0], wt0[1], wt0[2], wt0[3], wt0[4]
    b0, b1, b2, b3, b4 = wt1[0], wt1[1], wt1[2], wt1[3], wt1[4]
    for c in range(acc0.shape[0]):
        s0, s1, s2, s3, s4 = src[c], src[c + 1], src[c + 2], src[c + 3], src[c + 4]
        acc0[c] += a0 * s0 + a1 * s1 + a2 * s2 + a3 * s3 + a4 * s4
        acc1[c] += b0 * s0 + b1 * s1 + b2 * s2 + b3 * s3 + b4 * s4


@numba.njit(nogil=True, cache=True)
def _map_row(d, j, dst, r) -> None:
    """The 10 maps (``_maps``'s channel order) of derivative row j of ``d`` (``_chunk_derivatives``)
    into dst (10, W + 2r) from column r."""
    dx, dy, dxx, dxy, dyy = d[0, j], d[1, j], d[2, j], d[3, j], d[4, j]
    for c in range(dx.shape[0]):
        gx, gy, gxx, gyy, gxy = dx[c], dy[c], dxx[c], dyy[c], dxy[c]
        dst[0, r + c] = gx
        dst[1, r + c] = gy
        dst[2, r + c] = gx * gx
        dst[3, r + c] = gy * gy
        dst[4, r + c] = gx * gy
        dst[5, r + c] = gxy
        dst[6, r + c] = gxy * gxy
        dst[7, r + c] = gxx
        dst[8, r + c] = gyy
        dst[9, r + c] = gxx * gyy


def single_filter_block(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """relu(conv2d(handcrafted_maps(x), weight, bias, padding=2)) for a float32 CPU tensor x
    (B,1,H,W) and one 5x5 filter, weight (1, 10, 5, 5) (for maps scaled by ``MAP_SCALES``), bias (1,):
    (B,1,H,W), Tiny-Key.Net's learned block in one pass. Equal to the PyTorch form up to the order
    of the float sums."""
    b, _, h, w = x.shape
    out = torch.empty((b, h, w), dtype=torch.float32)
    _single_filter(x[:, 0].contiguous().numpy(), weight[0].float().contiguous().numpy(), float(bias[0]), out.numpy(),
                   _scratch(w))
    return out[:, None]


@numba.njit(nogil=True, cache=True)
def _local_maxima(score, r, border, threshold, rows, cols) -> int:
    """Writes the positions (row-major) of the strict maxima of ``score`` (H, W) in windows of
    radius r clipped at the edges, above ``threshold`` and at least ``border`` pixels from the
    edges, into rows, cols; returns their count, or -1 if they do not fit in rows, cols (then
    the written part is incomplete).

    Most pixels fail the test against their 3x3 neighbours. Where all 8 exist, that test runs
    first, column-vectorised over the row (on slices, whose indices the compiler knows are not
    negative); only the few pixels that pass it are tested against the whole window, which stops
    at the first neighbour that is not below them. Other pixels (a border under 1, r = 0) take the
    scalar test."""
    h, w = score.shape
    lo, hi = max(border, 1), min(w - border, w - 1)  # columns whose 3x3 neighbours all exist
    n_in = max(0, hi - lo)
    passed = np.zeros(n_in, np.bool_)
    n = 0
    for v in range(border, h - border):
        row = score[v]
        if r == 0 or v == 0 or v == h - 1:
            n = _add_kept(score, v, border, w - border, r, threshold, rows, cols, n)
            if n < 0:
                return -1
            continue
        up, down = score[v - 1], score[v + 1]
        ul, uc, ur = up[lo - 1 : hi - 1], up[lo:hi], up[lo + 1 : hi + 1]
        ml, mc, mr = row[lo - 1 : hi - 1], row[lo:hi], row[lo + 1 : hi + 1]
        dl, dc, dr = down[lo - 1 : hi - 1], down[lo:hi], down[lo + 1 : hi + 1]
        for i in range(n_in):
            s = mc[i]
            m = max(max(max(ul[i], uc[i]), max(ur[i], ml[i])), max(max(mr[i], dl[i]), max(dc[i], dr[i])))
            passed[i] = (s > m) & (s > threshold)
        n = _add_kept(score, v, border, min(lo, w - border), r, threshold, rows, cols, n)  # column 0, border 0
        if n < 0:
            return -1
        for i in range(n_in):
            if passed[i] and not (r > 1 and _beaten(score, mc[i], v, lo + i, r)):
                if n >= rows.shape[0]:
                    return -1
                rows[n], cols[n] = v, lo + i
                n += 1
        n = _add_kept(score, v, max(lo, hi), w - border, r, threshold, rows, cols, n)  # the last column
        if n < 0:
            return -1
    return n


@numba.njit(nogil=True, cache=True, inline="always")
def _add_kept(score, v, u0, u1, r, threshold, rows, cols, n) -> int:
    """The scalar test of ``_local_maxima`` for columns [u0, u1) of row v; returns the new count,
    or -1 if it does not fit in rows, cols."""
    for u in range(u0, u1):
        s = score[v, u]
        if s > threshold and not _beaten(score, s, v, u, min(r, 1)) and not (r > 1 and _beaten(score, s, v, u, r)):
            if n >= rows.shape[0]:
                return -1
            rows[n], cols[n] = v, u
            n += 1
    return n


@numba.njit(nogil=True, cache=True, inline="always")
def _beaten(score, s, v, u, r) -> bool:
    """Whether a value other than the centre's within radius r of (v, u) is >= s."""
    h, w = score.shape
    for y in range(max(0, v - r), min(h, v + r + 1)):
        row = score[y]
        for x in range(max(0, u - r), min(w, u + r + 1)):
            if row[x] >= s and (y != v or x != u):
                return True
    return False


def local_maxima(score: torch.Tensor, size: int, border: int, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows and columns (int64, row-major order) where a float32 CPU (H, W) ``score`` is
    ``detector.strict_maxima(score, size)``, above ``threshold`` and ``border`` pixels or more from
    the edges: one pass, no boolean maps."""
    h, w = score.shape
    r = size // 2
    # strict maxima are more than r apart in rows or columns, so at most this many
    bound = -(-h // (r + 1)) * -(-w // (r + 1))
    rows, cols = torch.empty(bound, dtype=torch.int64), torch.empty(bound, dtype=torch.int64)
    n = _local_maxima(score.contiguous().numpy(), r, border, float(threshold), rows.numpy(), cols.numpy())
    if n < 0:
        raise RuntimeError(f"local_maxima: more than {bound} maxima of size {size} in a {h}x{w} score, "
                           "which strict maxima cannot have")
    return rows[:n], cols[:n]


@numba.njit(nogil=True, cache=True)
def _widen_bfloat16(row, out) -> None:
    """out (w, C) float32 = row (w, C) of int16 holding bfloat16 bit patterns: each value's float32
    bits are the same 16 bits followed by 16 zeros."""
    bits = out.view(np.uint32)
    for x in range(row.shape[0]):
        for ch in range(row.shape[1]):
            bits[x, ch] = np.uint32(np.uint16(row[x, ch])) << 16


@numba.njit(nogil=True, cache=True, inline="always")
def _planar_columns(row, j0, j1, wc, same, dst, at, channels) -> None:
    """``_planar_row`` with the channel count as an argument, so that a literal one reaches the
    compiler (see there)."""
    if same:
        for c in range(j0.shape[0]):
            for ch in range(channels):
                dst[ch, at + c] = row[c, ch]
        return
    one = np.float32(1)
    for c in range(j0.shape[0]):
        a, b, t = j0[c], j1[c], wc[c]
        for ch in range(channels):
            dst[ch, at + c] = (one - t) * row[a, ch] + t * row[b, ch]


@numba.njit(nogil=True, cache=True)
def _planar_row(row, j0, j1, wc, same, dst, at) -> None:
    """dst[:, at : at + W] planar (C, W) = a channels-last float32 row (w, C) resized along x to the
    W = len(j0) columns as ATen's bilinear resize (``_lerp_columns``' formula, source columns j0, j1,
    weight wc of the second), or with ``same`` its first W columns as they are. The channels are the inner loop and read
    contiguously; for Key.Net's 8 and Tiny-Key.Net's 1 their count is a literal, which lets the
    compiler unroll that loop (2-15x faster, in development on 2-core AVX-512 VMs, than a transpose followed by column lerps)."""
    if row.shape[1] == 8:
        _planar_columns(row, j0, j1, wc, same, dst, at, 8)
    elif row.shape[1] == 1:
        _planar_columns(row, j0, j1, wc, same, dst, at, 1)
    else:
        _planar_columns(row, j0, j1, wc, same, dst, at, row.shape[1])


@numba.njit(nogil=True, cache=True, inline="always")
def _resized_row(row, j0, j1, wc, same, wide, bf16, dst, at) -> None:
    """``_planar_row`` of a float32 row, or (``bf16``) of an int16 row of bfloat16 bits widened
    into ``wide`` first."""
    if bf16:
        src = wide[: row.shape[0]]
        _widen_bfloat16(row, src)
        _planar_row(src, j0, j1, wc, same, dst, at)
    else:
        _planar_row(row, j0, j1, wc, same, dst, at)


@numba.njit(nogil=True, cache=True)
def _final(feats, rows, cols, weight, bias, o0, out, bf16) -> None:
    """out (B, R, W) = rows o0 .. o0 + R of relu(bias + conv2d(concat of the levels' features resized
    to the output grid, weight (L*C, k, k))) with zero padding, over n = len(rows[0][0]) output-grid
    rows.

    feats: L arrays (B, h_l, w_l, C) channels-last, float32 or (``bf16``) int16 bfloat16 bits;
    rows[l] = (i0, i1, wr): the two source rows of each of the n rows and the second's weight;
    cols[l] = (j0, j1, wc) likewise for the W columns. Each source row is resized along x once,
    planar (kept in slots by parity, as in ``_pyrdown``), and each output-grid row is lerped from
    two of them into a ring of the 6 rows that two output rows read: the upsampled features are
    never stored whole, and the convolution runs column-vectorised (``_conv_ready_rows``). A level
    whose first W columns are the output's (identity columns; columns after them are not read)
    skips the column lerps, which would multiply by exactly 1 and 0."""
    nb, nrows, w = out.shape
    n = rows[0][0].shape[0]
    c = feats[0].shape[3]
    ring = np.zeros((6, len(feats) * c, w + 4), np.float32)
    across = np.empty((len(feats), 2, c, w), np.float32)  # source rows resized along x, by parity
    held = np.empty((len(feats), 2), np.int64)
    wide = np.empty((max([f.shape[2] for f in feats]), c), np.float32)  # a bfloat16 row as float32
    same_width = np.zeros(len(feats), np.bool_)
    for level in range(len(feats)):
        same_width[level] = feats[level].shape[2] >= w and (cols[level][0] == np.arange(w)).all()
    for b in range(nb):
        held[:] = -1
        o = o0  # the next output row
        for m in range(min(n, o0 + nrows + 2)):
            for level in range(len(feats)):
                f, (i0, i1, wr), (j0, j1, wc) = feats[level], rows[level], cols[level]
                slot = ring[m % 6, level * c : (level + 1) * c]  # a 2-D slice with all columns stays C-ordered
                if wr[m] == 0:
                    # the lerp would give the first row exactly (level 0, whose rows are the
                    # output's): resize it straight into the ring
                    _resized_row(f[b, i0[m]], j0, j1, wc, same_width[level], wide, bf16, slot, 2)
                    continue
                for j in (i0[m], i1[m]):
                    if held[level, j % 2] != j:
                        _resized_row(f[b, j], j0, j1, wc, same_width[level], wide, bf16, across[level, j % 2], 0)
                        held[level, j % 2] = j
                for ch in range(c):
                    _lerp_rows(across[level, i0[m] % 2, ch], across[level, i1[m] % 2, ch], wr[m], slot[ch, 2 : 2 + w])
            o = _conv_ready_rows(ring, weight, n, m, o, o0 + nrows, out[b], o0, bias, True)


def final_response(feats: list, rows: list, cols: list, weight: torch.Tensor, bias: float, o0: int,
                   out: torch.Tensor) -> None:
    """``_final`` for CPU tensors: feats are (B,C,h,w) channels-last (or C = 1), all float32 or all
    bfloat16 (read exactly, summed in float32), rows and cols triples of 1-D tensors
    (``inference._source_rows``), weight (L*C, k, k), k = 5 or 3. Writes rows o0 .. o0 + R of
    relu(bias + the convolution) into ``out``, a float32 (B,1,R,W) tensor (a view of a larger one
    is fine: the rows of a band)."""
    def as_numpy(f: torch.Tensor) -> np.ndarray:
        f = f.permute(0, 2, 3, 1).contiguous()
        return (f.view(torch.int16) if f.dtype == torch.bfloat16 else f).numpy()  # numpy has no bfloat16

    _final(tuple(as_numpy(f) for f in feats),
           tuple(tuple(t.numpy() for t in r) for r in rows), tuple(tuple(t.numpy() for t in c) for c in cols),
           weight.float().contiguous().numpy(), np.float32(bias), o0, out[:, 0].numpy(),
           feats[0].dtype == torch.bfloat16)
