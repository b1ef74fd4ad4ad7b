"""Descriptor matching with kornia's matchers (``kornia.feature.match_mnn / match_snn / match_smnn``).

Descriptors are L2-normalised before matching, so that SIFT (OpenCV's are not unit length), RootSIFT
and learned descriptors are compared alike; distances are then Euclidean distances between unit
vectors. The result of matching image 0 with image 1 is hloc's form:

- ``matches0`` (N0,) int32: the index in image 1 of keypoint i's match, or -1;
- ``scores0`` (N0,) float32: the cosine similarity of the two descriptors of each match, 0 where unmatched.

Batching: the distances of one image to all the images it is paired with are computed in one matrix
product, then split per pair and handed to kornia through its ``dm`` argument.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

MATCHERS = ("mnn", "snn", "smnn")


class Matcher:
    """One of kornia's descriptor matchers.

    Args:
        method: ``mnn`` (mutual nearest neighbour), ``snn`` (ratio test, image 0 to image 1) or
            ``smnn`` (mutual nearest neighbour passing the ratio test both ways).
        ratio: the ratio-test threshold on distances (first / second nearest), for snn and smnn.
    """

    def __init__(self, method: str = "smnn", ratio: float = 0.85) -> None:
        if method not in MATCHERS:
            raise ValueError(f"unknown matcher {method!r}; choose one of {', '.join(MATCHERS)}")
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"ratio must be in (0, 1], got {ratio}")
        self.method = method
        self.ratio = ratio

    @property
    def settings(self) -> dict:
        return {"method": self.method, "ratio": self.ratio if self.method != "mnn" else None}

    def match(self, desc0: np.ndarray, desc1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Match (N0, D) with (N1, D) descriptors: ``matches0`` (N0,) int32 and ``scores0`` (N0,) float32."""
        return self.match_many(desc0, [desc1])[0]

    @torch.inference_mode()
    def match_many(self, desc0: np.ndarray, others: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Match (N0, D) descriptors with each of ``others`` ((Nk, D) each); one result per other image."""
        import kornia.feature as KF

        d0 = _unit(desc0)
        ds = [_unit(d) for d in others]
        for d in ds:
            if d.shape[1] != d0.shape[1]:
                raise ValueError(f"descriptor sizes differ: {d0.shape[1]} and {d.shape[1]}")
        sims = d0 @ torch.cat(ds).T if ds else torch.zeros(len(d0), 0)
        results = []
        for sim, d1 in zip(sims.split([len(d) for d in ds], dim=1), ds):
            matches0 = np.full(len(d0), -1, np.int32)
            scores0 = np.zeros(len(d0), np.float32)
            if len(d0) and len(d1):
                dm = (2.0 - 2.0 * sim).clamp_min_(0.0).sqrt_()
                if self.method == "mnn":
                    _, idx = KF.match_mnn(d0, d1, dm=dm)
                elif self.method == "snn":
                    _, idx = KF.match_snn(d0, d1, self.ratio, dm=dm)
                else:
                    _, idx = KF.match_smnn(d0, d1, self.ratio, dm=dm)
                i, j = idx[:, 0].numpy(), idx[:, 1].numpy()
                matches0[i] = j
                scores0[i] = sim[i, j].numpy()
            results.append((matches0, scores0))
        return results


def _unit(desc: np.ndarray) -> torch.Tensor:
    d = torch.as_tensor(np.asarray(desc, dtype=np.float32))
    if d.ndim != 2:
        raise ValueError(f"descriptors must be (N, D), got shape {tuple(d.shape)}")
    return torch.nn.functional.normalize(d, dim=1)


def matches_to_pairs(matches0: np.ndarray) -> np.ndarray:
    """``matches0`` (N0,) as (M, 2) index pairs ``(i, matches0[i])`` for the matched i, ascending."""
    i = np.flatnonzero(matches0 >= 0)
    return np.stack([i, matches0[i]], axis=1).astype(np.int64)
