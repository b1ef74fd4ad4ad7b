"""kornia local affine frames (LAFs) from and to keypoints, radii and OpenCV-sense angles.

A LAF ``[A | c]`` (kornia, ``kornia.feature.laf_from_center_scale_ori``) has ``A = r * R(ori)`` with
kornia's ``ori`` turning the patch's x axis counter-clockwise on screen; OpenCV's angle (ours) turns
it clockwise, so ``ori = -angle``.
"""

from __future__ import annotations

import numpy as np
import torch


def features_to_lafs(keypoints, scales, angles=None) -> torch.Tensor:
    """LAFs (N, 2, 3) float32 of keypoints (N, 2), radii (N,) and angles (N,) in degrees (default 0)."""
    from kornia.feature import laf_from_center_scale_ori

    xy = torch.as_tensor(np.asarray(keypoints, np.float32)).reshape(1, -1, 2)
    r = torch.as_tensor(np.asarray(scales, np.float32)).reshape(1, -1, 1, 1)
    ori = torch.zeros(1, xy.shape[1], 1) if angles is None else -torch.as_tensor(np.asarray(angles, np.float32)).reshape(1, -1, 1)
    return laf_from_center_scale_ori(xy, r, ori)[0]


def lafs_to_features(lafs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keypoints (N, 2), radii (N,) and angles (N,) in degrees in ``[0, 360)`` of LAFs (N, 2, 3)."""
    from kornia.feature import get_laf_center, get_laf_orientation, get_laf_scale

    lafs = lafs[None]
    angles = torch.remainder(-get_laf_orientation(lafs)[0, :, 0], 360.0)
    return get_laf_center(lafs)[0], get_laf_scale(lafs)[0, :, 0, 0], angles
