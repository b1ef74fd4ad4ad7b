"""Descriptors at given keypoints: OpenCV SIFT / RootSIFT, and kornia patch networks from local weights.

A descriptor is any object with ``name``, ``dim`` and
``compute(image, keypoints, scales, angles=None) -> (N, dim) float32`` (the ``Descriptor`` protocol):
``image`` is ``(H, W)`` float32 in ``[0, 1]``, ``keypoints`` ``(N, 2)``, ``scales`` ``(N,)`` radii,
``angles`` ``(N,)`` in degrees (OpenCV's sense, see ``keynet.features``) or None for upright; rows
come back in input order. A descriptor trained by this project plugs in by implementing it (or, for
a kornia-style patch network, as ``PatchDescriptor(name, net)``).

Region rule, the same for every descriptor: a keypoint of radius ``r`` is described over the square
``[-r, r]^2`` of its (rotated) frame. OpenCV's SIFT descriptor is a 4x4 grid of cells
``1.5 * size`` wide, spanning ``[-3 size, 3 size]``, so ``KeyPoint.size = r / 3``
(``RADIUS_PER_OPENCV_SIZE``); patch networks see that square resampled to 32x32 by kornia's
``extract_patches_from_pyramid``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
import torch
from torch import nn

RADIUS_PER_OPENCV_SIZE = 3.0
_SIFT_SIGMA = 1.6  # OpenCV SIFT's base sigma: KeyPoint.size = 2 * 1.6 * 2^(octave + layer / 3)
_SIFT_LAYERS = 3


class Descriptor(Protocol):
    name: str
    dim: int

    def compute(
        self, image: np.ndarray, keypoints: np.ndarray, scales: np.ndarray, angles: np.ndarray | None = None
    ) -> np.ndarray: ...


def to_uint8(image: np.ndarray) -> np.ndarray:
    """``(H, W)`` float image in ``[0, 1]`` as uint8 (exact for images read from 8-bit files)."""
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def sift_octave_layer(size: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV SIFT pyramid octave and layer whose blur matches a keypoint of ``size``.

    SIFT computes a provided keypoint's descriptor on the Gaussian image its packed ``octave`` field
    names; a keypoint from another detector carries no such field, and computing a large keypoint at
    octave 0 would sample a huge window at full resolution. Layers 1..3 are preferred (those SIFT
    detects on); octave -1 (the 2x upsampled image) is the finest.
    """
    t = np.rint(_SIFT_LAYERS * np.log2(np.maximum(size, 1e-6) / (2 * _SIFT_SIGMA))).astype(np.int64)
    octave = np.floor_divide(t - 1, _SIFT_LAYERS)
    layer = t - _SIFT_LAYERS * octave  # in 1..3
    finest = octave < -1
    octave[finest], layer[finest] = -1, 1
    return octave, layer


def rootsift(desc: np.ndarray) -> np.ndarray:
    """RootSIFT of (N, D) non-negative descriptors: L1-normalised, then square-rooted (unit L2 norm)."""
    return np.sqrt(desc / np.maximum(desc.sum(1, keepdims=True), 1e-12))


class SIFTDescriptor:
    """OpenCV SIFT descriptors at given keypoints (``KeyPoint.size = r / 3``, ``angle`` as given, the
    pyramid level packed into ``octave``); ``root=True`` gives RootSIFT (Arandjelovic & Zisserman
    2012: L1-normalised, square-rooted, hence unit L2 norm). Output ``(N, 128)`` float32."""

    dim = 128

    def __init__(self, root: bool = False) -> None:
        self.root = root
        self.name = "rootsift" if root else "sift"
        self._sift = cv2.SIFT_create()

    def compute(
        self, image: np.ndarray, keypoints: np.ndarray, scales: np.ndarray, angles: np.ndarray | None = None
    ) -> np.ndarray:
        from keynet.io.opencv import to_cv_keypoints

        if len(keypoints) == 0:
            return np.zeros((0, 128), np.float32)
        kps = to_cv_keypoints(keypoints, scales, angles, pack_octave=True)
        out_kps, desc = self._sift.compute(to_uint8(image), kps)
        if desc is None or len(out_kps) != len(kps):
            raise RuntimeError(f"SIFT returned {0 if desc is None else len(out_kps)} of {len(kps)} descriptors")
        desc = desc.astype(np.float32)
        return rootsift(desc) if self.root else desc


# kornia architectures a weights file can be loaded into (all take 32x32 patches, give 128 floats).
ARCHITECTURES = ("tfeat", "hardnet", "sosnet", "hynet")
SHIPPED_DESCRIPTOR = Path(__file__).resolve().parents[1] / "weights" / "descriptor.pth"


def _kornia_net(arch: str, state: dict[str, torch.Tensor]) -> nn.Module:
    """An untrained network of ``arch`` for ``state``: HardNet with the state's channel counts
    (``ScaledHardNet``, kornia's HardNet at full width)."""
    import kornia.feature as KF

    from .patchnet import ScaledHardNet

    channels = ScaledHardNet.channels_of(state) if arch == "hardnet" else None
    if channels:
        return ScaledHardNet(channels=channels)
    nets = {"tfeat": KF.TFeat, "hardnet": KF.HardNet, "sosnet": KF.SOSNet, "hynet": KF.HyNet}
    return nets[arch](pretrained=False)


def _affnet_hardtfeat_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """AffNet's ``HardTFeatNet`` layout in kornia's TFeat layout: its 8x8 convolution head is the same
    map as kornia's linear layer."""
    return {
        "features.1.weight": state["features.0.weight"],
        "features.1.bias": state["features.0.bias"],
        "features.4.weight": state["features.3.weight"],
        "features.4.bias": state["features.3.bias"],
        "descr.0.weight": state["classifier.1.weight"].reshape(128, -1),
        "descr.0.bias": state["classifier.1.bias"],
    }


def load_patch_network(weights: str | Path, arch: str | None = None) -> tuple[str, nn.Module]:
    """A kornia patch network with the weights of a local file: ``arch`` one of ``ARCHITECTURES``
    (``hardnet`` at any width, ``keynet.features.patchnet``),
    or None to take the first whose parameters the file fits exactly (``strict`` loading).
    TFeat also reads AffNet's ``HardTFeat.pth``. Returns (arch, network in eval mode)."""
    from keynet.weights import load_state_dict_file

    state = load_state_dict_file(weights)
    if "classifier.1.weight" in state:
        state = _affnet_hardtfeat_state(state)
    if arch is not None and arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    errors = []
    for name in [arch] if arch else ARCHITECTURES:
        net = _kornia_net(name, state)
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as e:
            errors.append(f"{name}: {str(e).splitlines()[0]}")
            continue
        return name, net.eval()
    raise ValueError(f"{weights} fits none of the architectures tried ({'; '.join(errors)})")


class PatchDescriptor:
    """A patch network (kornia's TFeat, HardNet, SOSNet, HyNet or any module mapping (B, 1, 32, 32) to
    (B, D)) on 32x32 patches of each keypoint's LAF, sampled by kornia's ``extract_patches_from_pyramid``
    over ``[-r, r]^2`` of the frame rotated by the keypoint's angle. Output ``(N, D)`` float32, L2-normalised.

    kornia's TFeat normalises a patch by its biased std (InstanceNorm), AffNet's by the unbiased one:
    with AffNet's HardTFeat weights that is a ``sqrt(1024 / 1023)`` rescaling of the input.
    """

    patch_size = 32

    def __init__(self, name: str, net: nn.Module, device: str | torch.device = "cpu", batch: int = 1024,
                 bfloat16: bool = False) -> None:
        self.name = name
        self.device = torch.device(device)
        self.bfloat16 = bfloat16 and self.device.type == "cpu"  # autocast: convolutions in bfloat16
        self.net = net.eval().to(self.device)
        self.batch = batch
        with torch.inference_mode():
            self.dim = int(self.net(torch.rand(2, 1, self.patch_size, self.patch_size, device=self.device)).shape[1])

    @torch.inference_mode()
    def compute(
        self, image: np.ndarray, keypoints: np.ndarray, scales: np.ndarray, angles: np.ndarray | None = None
    ) -> np.ndarray:
        if len(keypoints) == 0:
            return np.zeros((0, self.dim), np.float32)
        patches = extract_patches(image, keypoints, scales, angles, self.patch_size, self.device)
        with torch.autocast("cpu", torch.bfloat16, enabled=self.bfloat16):
            desc = torch.cat([self.net(chunk) for chunk in patches.split(self.batch)])
        return torch.nn.functional.normalize(desc.float(), dim=1).cpu().numpy()


def extract_patches(image: np.ndarray, keypoints: np.ndarray, scales: np.ndarray, angles: np.ndarray | None = None,
                    patch_size: int = 32, device: str | torch.device = "cpu") -> torch.Tensor:
    """(N, 1, P, P) float32 patches of an (H, W) image over ``[-r, r]^2`` of each keypoint's frame
    rotated by its angle (degrees, OpenCV's sense), by kornia's ``extract_patches_from_pyramid``."""
    import kornia.feature as KF

    from .lafs import features_to_lafs

    img = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None].to(device)
    lafs = features_to_lafs(keypoints, scales, angles).to(device)
    return KF.extract_patches_from_pyramid(img, lafs[None], PS=patch_size)[0]


def make_descriptor(spec: str, device: str | torch.device = "cpu") -> Descriptor:
    """A descriptor from a spec: ``sift``, ``rootsift``, ``keynet`` (the HardNet network trained by
    ``keynet train-descriptor`` and shipped in the package; bfloat16 on CPUs that run it natively),
    ``hardtfeat`` (AffNet's HardTFeat weights in the shared data), ``ARCH:PATH`` with ARCH in ``ARCHITECTURES``, or a weights file ``PATH`` (the
    architecture found from its parameters)."""
    from keynet.paths import shared_data_dir

    if spec in ("sift", "rootsift"):
        return SIFTDescriptor(root=spec == "rootsift")
    if spec == "keynet":
        from keynet.inference import native_bfloat16

        return PatchDescriptor(spec, load_patch_network(SHIPPED_DESCRIPTOR, "hardnet")[1], device,
                               bfloat16=native_bfloat16())
    if spec == "hardtfeat":
        return PatchDescriptor(spec, load_patch_network(shared_data_dir() / "weights" / "affnet" / "HardTFeat.pth", "tfeat")[1], device)
    arch, sep, path = spec.partition(":")
    if sep and arch in ARCHITECTURES:
        return PatchDescriptor(spec, load_patch_network(path, arch)[1], device)
    if Path(spec).is_file():
        arch, net = load_patch_network(spec)
        return PatchDescriptor(f"{arch}:{spec}", net, device)
    raise ValueError(f"unknown descriptor {spec!r}; use sift, rootsift, keynet, hardtfeat, ARCH:PATH "
                     f"(ARCH one of {', '.join(ARCHITECTURES)}) or a weights file")
