"""The IP layer and M-SIP loss on constructed score maps with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from keynet.train.loss import (MSIP_SIZES, MSIP_WEIGHTS, ip_layer, msip_loss, scale_selection_loss, warp_stack_to, warp_to,
                               window_argmax)


def translation(tx: float, ty: float) -> torch.Tensor:
    return torch.tensor([[[1.0, 0.0, tx], [0.0, 1.0, ty], [0.0, 0.0, 1.0]]])


# M-SIP window sizes and level weights, written here from the released code (axelBarroso/Key.Net,
# train_network.py: MSIP_sizes = [8, 16, 24, 32, 40], MSIP_factor_loss = [256.0, 64.0, 16.0, 4.0, 1.0]);
# the paper (Sec. 3.3) uses the same five window sizes.
RELEASED_SIZES = (8, 16, 24, 32, 40)
RELEASED_WEIGHTS = (256.0, 64.0, 16.0, 4.0, 1.0)


def test_paper_levels():
    assert MSIP_SIZES == RELEASED_SIZES and MSIP_WEIGHTS == RELEASED_WEIGHTS


def test_ip_layer_delta_and_scale_invariance():
    score = torch.zeros(1, 1, 16, 16)
    score[0, 0, 3, 5] = 2.0  # window (0, 0)
    score[0, 0, 12, 9] = 0.5  # window (1, 1)
    coords, soft = ip_layer(score, 8)
    assert coords.shape == (1, 2, 2, 2) and soft.shape == (1, 2, 2)
    assert torch.allclose(coords[0, 0, 0], torch.tensor([5.0, 3.0]), atol=1e-4)
    assert torch.allclose(coords[0, 1, 1], torch.tensor([9.0, 12.0]), atol=1e-4)
    assert torch.allclose(soft[0], torch.tensor([[2.0, 0.0], [0.0, 0.5]]), atol=1e-4)
    # Weights exp(R / max) - 1 do not depend on the response's scale.
    blob = torch.rand(1, 1, 16, 16)
    assert torch.allclose(ip_layer(blob, 8)[0], ip_layer(100.0 * blob, 8)[0], atol=1e-4)


def test_ip_layer_soft_average():
    # Two pixels of one window at the maximum and half of it: weights e-1 and e^0.5-1.
    score = torch.zeros(1, 1, 8, 8)
    score[0, 0, 2, 2] = 1.0
    score[0, 0, 2, 6] = 0.5
    coords, _ = ip_layer(score, 8)
    w1, w2 = math.e - 1.0, math.exp(0.5) - 1.0
    assert coords[0, 0, 0, 0].item() == pytest.approx((2 * w1 + 6 * w2) / (w1 + w2), abs=1e-4)
    assert coords[0, 0, 0, 1].item() == pytest.approx(2.0, abs=1e-4)


def test_window_argmax():
    score = torch.zeros(2, 1, 16, 24)
    score[1, 0, 10, 20] = 1.0
    coords, values = window_argmax(score, 8)
    assert coords.shape == (2, 2, 3, 2)
    assert coords[1, 1, 2].tolist() == [20.0, 10.0] and values[1, 1, 2] == 1.0


def test_warp_to_integer_translation():
    image = torch.zeros(1, 1, 10, 12)
    image[0, 0, 4, 3] = 1.0
    out = warp_to(image, translation(2.0, 1.0), (10, 12))  # x_dst = x_src + (2, 1)
    assert out[0, 0, 5, 5] == pytest.approx(1.0) and out.sum() == pytest.approx(1.0)


@pytest.mark.parametrize("d", [(0, 0), (1, 2), (-3, 1)])
def test_single_peak_known_loss(d):
    """A peak moved by a translation, plus an offset d in view b: the loss is d's squared length.

    One 16 x 16 window: the coordinate weight is 100 * softmax over one window = 100, so each
    direction gives 1000 * 100 * |d|^2 / 16^2 and M-SIP (one level, weight 1) their mean."""
    a = torch.zeros(1, 1, 16, 16)
    b = torch.zeros(1, 1, 16, 16)
    a[0, 0, 7, 5] = 1.0
    b[0, 0, 7 + 2 + d[1], 5 + 3 + d[0]] = 3.0  # H moves (x, y) by (3, 2)
    loss, levels = msip_loss(a, b, translation(3.0, 2.0), sizes=(16,), level_weights=(1.0,), border=0)
    expected = 1000.0 * 100.0 * (d[0] ** 2 + d[1] ** 2) / 16**2
    assert loss.item() == pytest.approx(expected, rel=1e-4, abs=1e-2)
    assert levels[16] == pytest.approx(expected, rel=1e-4, abs=1e-2)


def test_gradient_moves_peak_towards_target():
    a = torch.zeros(1, 1, 16, 16)
    a[0, 0, 7, 5] = 1.0
    a.requires_grad_(True)
    b = torch.zeros(1, 1, 16, 16)
    b[0, 0, 7 + 2 + 2, 5 + 3 + 1] = 1.0  # target in a: (x, y) = (6, 9)
    loss, _ = msip_loss(a, b, translation(3.0, 2.0), sizes=(16,), level_weights=(1.0,), border=0)
    loss.backward()
    g = a.grad[0, 0]
    assert g[9, 6] < 0  # raising the score at the target lowers the loss
    assert g[5, 4] > 0  # raising it on the far side raises the loss


def test_border_and_visibility_masks():
    a = torch.zeros(1, 1, 16, 16)
    b = torch.zeros(1, 1, 16, 16)
    a[0, 0, 1, 1] = 1.0  # inside a 2-pixel border: ignored
    b[0, 0, 6, 6] = 1.0
    loss, _ = msip_loss(a, b, translation(0.0, 0.0), sizes=(16,), level_weights=(1.0,), border=2)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    # Every pixel of a leaves b's frame under a 20-pixel shift: nothing is visible, nothing is trained.
    a2 = torch.rand(1, 1, 16, 16, requires_grad=True)
    loss2, _ = msip_loss(a2, torch.rand(1, 1, 16, 16), translation(20.0, 0.0), sizes=(8,), level_weights=(1.0,), border=0)
    loss2.backward()
    assert loss2.item() == 0.0 and a2.grad.abs().max() == 0.0


def _reference_one_way(sa: np.ndarray, sb: np.ndarray, t: tuple[int, int], border: int, n: int) -> float:
    """The IP loss of view a against view b for an integer translation ``x_b = x_a + t``, written
    out window by window from the definitions in the loss module's docstring: shifts instead of
    warps, loops instead of pooling."""
    h, w = sa.shape
    tx, ty = t
    inner_a = np.zeros((h, w), bool)
    inner_a[border : h - border, border : w - border] = True
    inner_b = inner_a  # same size
    visible = np.zeros((h, w), bool)
    target = np.zeros((h, w))
    for y in range(h):
        for x in range(w):
            yb, xb = y + ty, x + tx
            if inner_a[y, x] and 0 <= yb < h and 0 <= xb < w and inner_b[yb, xb]:
                visible[y, x] = True
                target[y, x] = sb[yb, xb]
    a = np.where(visible, sa, 0.0)
    coords, soft, goal, valid = [], [], [], []
    for i in range(h // n):
        for j in range(w // n):
            win = a[i * n : (i + 1) * n, j * n : (j + 1) * n]
            m = win.max()
            wts = np.exp(win / m) - 1.0 if m > 0 else np.zeros_like(win)
            ys, xs = np.mgrid[i * n : (i + 1) * n, j * n : (j + 1) * n]
            norm = wts.sum()
            coords.append([(wts * xs).sum() / norm, (wts * ys).sum() / norm] if norm > 0 else [0.0, 0.0])
            soft.append((wts * win).sum() / norm if norm > 0 else 0.0)
            twin = target[i * n : (i + 1) * n, j * n : (j + 1) * n]
            k = np.unravel_index(np.argmax(twin), twin.shape)
            goal.append([j * n + k[1], i * n + k[0]])
            valid.append(twin.max() > 0 and soft[-1] > 0)
    soft = np.array(soft)
    e = np.exp(soft / soft.max())
    weights = 100.0 * e / e.sum()
    dist = (((np.array(coords) - np.array(goal)) / n) ** 2).sum(1)
    return 1000.0 * float((weights * np.array(valid) * dist).mean())


def test_full_msip_equals_a_loop_reference_on_training_size():
    """M-SIP on 192 px training crops (two pairs, each shifted so that part of each view is not
    seen by the other) against the loop reference above."""
    shifts = [(12, -7), (-5, 9)]
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 1, 192, 192, generator=g, dtype=torch.float64) ** 4  # peaky, as trained responses
    b = torch.rand(2, 1, 192, 192, generator=g, dtype=torch.float64) ** 4
    h = torch.cat([translation(*t) for t in shifts]).double()
    a.requires_grad_(True)
    loss, levels = msip_loss(a, b, h, border=16)
    loss.backward()
    ref_levels = {}
    for n in RELEASED_SIZES:  # msip_loss's defaults must be these sizes and weights
        per_pair = []
        for k, (tx, ty) in enumerate(shifts):
            sa, sb = a[k, 0].detach().numpy(), b[k, 0].numpy()
            per_pair.append(0.5 * (_reference_one_way(sa, sb, (tx, ty), 16, n) + _reference_one_way(sb, sa, (-tx, -ty), 16, n)))
        ref_levels[n] = float(np.mean(per_pair))  # windows of the batch are averaged together
    assert levels == pytest.approx(ref_levels, rel=1e-6)
    expected = sum(w * ref_levels[n] for n, w in zip(RELEASED_SIZES, RELEASED_WEIGHTS))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert torch.isfinite(a.grad).all() and a.grad.abs().max() > 0


def test_loss_ignores_the_part_of_a_view_the_other_does_not_see():
    """Where b does not see a (x_a + 12 beyond b's border, or y_a - 7 within it), a's response has
    no weight: changing it leaves the loss unchanged and gets no gradient."""
    g = torch.Generator().manual_seed(1)
    a = torch.rand(1, 1, 96, 96, generator=g, dtype=torch.float64)
    b = torch.rand(1, 1, 96, 96, generator=g, dtype=torch.float64)
    h = translation(12.0, -7.0).double()
    ys, xs = torch.meshgrid(torch.arange(96), torch.arange(96), indexing="ij")
    # b's inner part (16 px border) is 16..79; keep a margin of 2 px from the visible edge.
    unseen = (xs + 12 > 79 + 2) | (ys - 7 < 16 - 2)
    changed = torch.where(unseen, 5.0 * torch.rand(96, 96, generator=g, dtype=torch.float64), a[0, 0])[None, None]
    a.requires_grad_(True)
    loss, _ = msip_loss(a, b, h)
    loss.backward()
    assert loss.item() > 0
    assert msip_loss(changed, b, h)[0].item() == pytest.approx(loss.item(), rel=1e-12)
    assert a.grad[0, 0][unseen].abs().max() == 0.0 and a.grad[0, 0][~unseen].abs().max() > 0


def test_sparsity_loss_by_hand_and_scale_free():
    from keynet.train.loss import sparsity_loss

    r = torch.tensor([[[[2.0, -1.0], [1.0, 0.0]]], [[[-3.0, -1.0], [0.0, 0.0]]]])
    # image 0: positive mass (2 + 1) / 4 pixels over its peak 2 = 0.375; image 1 has no positive pixel
    assert sparsity_loss(r).item() == pytest.approx((0.375 + 0.0) / 2)
    assert sparsity_loss(7.5 * r).item() == pytest.approx(sparsity_loss(r).item())
    x = r.clone().requires_grad_(True)
    sparsity_loss(x).backward()  # pushes only the positive pixels down
    assert (x.grad[r > 0] > 0).all() and (x.grad[r <= 0] == 0).all()


# The scale-space form: stacks of L pyramid levels, sqrt(2) apart as in the detector.
ROOT2 = math.sqrt(2.0)


def zoom(s: float) -> torch.Tensor:
    return torch.tensor([[[s, 0.0, 0.0], [0.0, s, 0.0], [0.0, 0.0, 1.0]]])


def test_warp_stack_moves_a_structure_up_one_level_per_sqrt2_of_zoom():
    stack = torch.zeros(1, 4, 64, 64)
    stack[0, 1, 20, 10] = 1.0  # level 1, (x, y) = (10, 20)
    assert torch.allclose(warp_stack_to(stack, zoom(1.0), (64, 64), ROOT2), stack, atol=1e-5)
    # Seen sqrt(2) times larger, the structure sits at (10, 20) * sqrt(2) and one level further down.
    out = warp_stack_to(stack, zoom(ROOT2), (64, 64), ROOT2)
    level, y, x = np.unravel_index(int(out.argmax()), out.shape[1:])
    assert (level, y, x) == (2, round(20 * ROOT2), round(10 * ROOT2))
    assert out[0, [0, 1, 3]].abs().max() < 1e-6
    # Seen half as large: two levels up, where level 1 - 2 does not exist, so nothing is left.
    assert warp_stack_to(stack, zoom(0.5), (64, 64), ROOT2).abs().max() < 1e-6


def blobs(points: list[tuple[int, int, int]], levels: int = 4, side: int = 64) -> torch.Tensor:
    stack = torch.zeros(1, levels, side, side)
    for level, y, x in points:
        stack[0, level, y, x] = 1.0
    return torch.nn.functional.avg_pool2d(stack, 3, 1, 1) * 9.0


def test_scale_selection_loss_wants_the_level_that_follows_the_zoom():
    a = blobs([(1, 20, 12), (2, 40, 18), (1, 12, 30), (2, 24, 24), (0, 44, 40), (1, 30, 46)])
    b = warp_stack_to(a, zoom(ROOT2), (64, 64), ROOT2)  # view b: a zoomed by sqrt(2), one level further down
    right = scale_selection_loss(a, b, zoom(ROOT2), ROOT2, border=4)
    assert right < 0.5 * scale_selection_loss(a, torch.roll(b, 1, 1), zoom(ROOT2), ROOT2, border=4)
    # A gradient step on view a's stack raises, at a blob, the level the other view asks for.
    x = a.clone().requires_grad_(True)
    target = torch.roll(b, -1, 1)  # b one level up: a's blob at level 1 is now asked for at level 0
    scale_selection_loss(x, target, zoom(ROOT2), ROOT2, border=4).backward()
    assert x.grad[0, 0, 19:22, 11:14].sum() < 0 < x.grad[0, 1, 19:22, 11:14].sum()
