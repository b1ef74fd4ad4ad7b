"""Orientation, descriptors and the Extractor (keynet.features)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from keynet.features import Extractor, GradientOrientation, make_descriptor, make_orientation
from keynet.features.descriptors import SIFTDescriptor, load_patch_network, to_uint8
from keynet.features.lafs import features_to_lafs, lafs_to_features
from keynet.io.image import load_image


def angle_diff(a, b) -> np.ndarray:
    """Signed difference a - b in degrees, in [-180, 180)."""
    return (np.asarray(a, np.float64) - np.asarray(b, np.float64) + 180.0) % 360.0 - 180.0


@pytest.fixture(scope="module")
def crop(data_dir: Path) -> np.ndarray:
    return load_image(data_dir / "oxford_affine" / "boat" / "img1.png")[100:340, 200:520].copy()  # 320x240


@pytest.fixture(scope="module")
def sift_kps(crop: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """OpenCV SIFT keypoints of the crop: positions, radii (3 * size) and OpenCV's angles."""
    kps = cv2.SIFT_create(nfeatures=300).detect(to_uint8(crop), None)
    rows = np.array([(*k.pt, k.size, k.angle) for k in kps], np.float32)
    _, first = np.unique(rows[:, :3], axis=0, return_index=True)  # SIFT repeats a point per extra angle
    rows = rows[np.sort(first)]
    return rows[:, :2].copy(), 3 * rows[:, 2], rows[:, 3].copy()


def rot90_points(xy: np.ndarray, width: int) -> np.ndarray:
    """Where points of an image of ``width`` columns go in ``np.rot90(image)`` (counter-clockwise on screen)."""
    return np.stack([xy[:, 1], width - 1 - xy[:, 0]], 1)


@pytest.mark.parametrize("direction", [0.0, 30.0, 135.0, 250.0])
def test_gradient_orientation_points_along_the_gradient(direction: float) -> None:
    # A ramp rising along (cos a, sin a) in x-right, y-down coordinates: OpenCV's angle a.
    y, x = np.mgrid[0:101, 0:101].astype(np.float32)
    t = np.deg2rad(direction)
    ramp = ((np.cos(t) * x + np.sin(t) * y) / 300 + 0.5).astype(np.float32)
    angles, index = GradientOrientation().compute(ramp, np.array([[50.0, 50.0]]), np.array([20.0]))
    assert index.tolist() == [0] and abs(angle_diff(angles, direction)[0]) < 1.0


def test_gradient_orientation_agrees_with_opencv_sift(crop: np.ndarray, sift_kps) -> None:
    # Same window rule as SIFT (sigma = r / 4 with r = 3 * size): most angles agree with OpenCV's.
    xy, radii, theirs = sift_kps
    ours, _ = GradientOrientation().compute(crop, xy, radii)
    agree = np.abs(angle_diff(ours, theirs)) < 10
    assert agree.mean() > 0.5


def test_gradient_orientation_turns_with_the_image(crop: np.ndarray, sift_kps) -> None:
    xy, radii, _ = sift_kps
    est = GradientOrientation()
    before, _ = est.compute(crop, xy, radii)
    # Exact 90 degrees: np.rot90 turns the picture counter-clockwise on screen, angles drop by 90.
    after, _ = est.compute(np.ascontiguousarray(np.rot90(crop)), rot90_points(xy, crop.shape[1]), radii)
    assert (np.abs(angle_diff(after, before - 90)) < 2).mean() > 0.95
    # 30 degrees counter-clockwise about the centre (resampled): angles drop by 30.
    h, w = crop.shape
    m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), 30, 1.0)
    turned = cv2.warpAffine(crop, m, (w, h), flags=cv2.INTER_LINEAR)
    xy2 = xy @ m[:, :2].T + m[:, 2]
    inside = (xy2 > 40).all(1) & (xy2[:, 0] < w - 40) & (xy2[:, 1] < h - 40) & (xy > 40).all(1)
    after, _ = est.compute(turned, xy2[inside], radii[inside])
    assert (np.abs(angle_diff(after, before[inside] - 30)) < 10).mean() > 0.75


def test_multiple_orientations_add_secondary_peaks(crop: np.ndarray, sift_kps) -> None:
    xy, radii, _ = sift_kps
    first, _ = GradientOrientation().compute(crop, xy, radii)
    angles, index = GradientOrientation(multiple=True).compute(crop, xy, radii)
    assert len(angles) > len(xy) and np.all(np.diff(index) >= 0) and set(index.tolist()) == set(range(len(xy)))
    best = np.full(len(xy), 360.0)
    np.minimum.at(best, index, np.abs(angle_diff(angles, first[index])))
    assert np.all(best < 1e-3)  # the highest peak is always among them


def test_plus_upright_adds_an_upright_copy_first(crop: np.ndarray, sift_kps) -> None:
    xy, radii, _ = sift_kps
    grad, _ = GradientOrientation().compute(crop, xy, radii)
    angles, index = make_orientation("gradient+upright").compute(crop, xy, radii)
    assert index.tolist() == np.repeat(np.arange(len(xy)), 2).tolist()
    assert np.all(angles[0::2] == 0) and np.array_equal(angles[1::2], grad)


def test_plus_upright_matches_like_upright_on_upright_images_and_like_gradient_on_turned_ones(
    crop: np.ndarray, sift_kps
) -> None:
    from keynet.eval.protocols import mutual_nearest_neighbours
    from keynet.eval.run import group_copies

    xy, radii, _ = sift_kps
    keep = (xy > 40).all(1) & (xy[:, 0] < crop.shape[1] - 40) & (xy[:, 1] < crop.shape[0] - 40)
    xy, radii = xy[keep], radii[keep]
    noisy = np.clip(crop + np.random.default_rng(0).normal(0, 0.1, crop.shape), 0, 1).astype(np.float32)
    turned = np.ascontiguousarray(np.rot90(noisy))
    sift = make_descriptor("sift")

    def correct(spec: str, image: np.ndarray, points: np.ndarray) -> float:
        def described(img: np.ndarray, p: np.ndarray) -> np.ndarray:
            angles, index = make_orientation(spec).compute(img, p, radii)
            return group_copies(sift.compute(img, p[index], radii[index], angles), index, len(p))

        m = mutual_nearest_neighbours(described(crop, xy), described(image, points))
        return float(np.mean(m[:, 0] == m[:, 1]) * len(m) / len(xy))

    upright, gradient, both = (correct(s, noisy, xy) for s in ("upright", "gradient", "gradient+upright"))
    assert both >= upright - 0.03 and both > gradient  # nothing turns: the upright copies match
    xy_t = rot90_points(xy, crop.shape[1])
    upright, gradient, both = (correct(s, turned, xy_t) for s in ("upright", "gradient", "gradient+upright"))
    assert both >= gradient - 0.05 and both > upright + 0.3  # turned: the oriented copies match


def test_lafs_follow_kornia_convention() -> None:
    import kornia.feature as KF

    xy = np.array([[10.0, 20.0], [30.5, 4.0]], np.float32)
    lafs = features_to_lafs(xy, np.array([3.0, 7.0]), np.array([30.0, 300.0]))
    # kornia's orientation turns the patch axis the other way: ori = -angle
    torch.testing.assert_close(KF.get_laf_orientation(lafs[None])[0, :, 0], torch.tensor([-30.0, 60.0]))
    # the patch's x axis (first column of A) points along (cos a, sin a) in the image
    torch.testing.assert_close(lafs[0, :, 0] / 3, torch.tensor([np.cos(np.pi / 6), np.sin(np.pi / 6)]).float())
    kps, scales, angles = lafs_to_features(lafs)
    torch.testing.assert_close(kps, torch.from_numpy(xy))
    torch.testing.assert_close(scales, torch.tensor([3.0, 7.0]))
    torch.testing.assert_close(angles, torch.tensor([30.0, 300.0]), atol=1e-4, rtol=0)


@pytest.mark.parametrize("spec", ["sift", "hardtfeat"])
def test_descriptors_are_rotation_invariant_with_orientation(spec: str, crop: np.ndarray, sift_kps) -> None:
    # np.rot90 + the gradient orientation: the same keypoints get (nearly) the same descriptors.
    xy, radii, _ = sift_kps
    keep = (xy > 40).all(1) & (xy[:, 0] < crop.shape[1] - 40) & (xy[:, 1] < crop.shape[0] - 40)
    xy, radii = xy[keep], radii[keep]
    est, desc = GradientOrientation(), make_descriptor(spec)
    rot = np.ascontiguousarray(np.rot90(crop))
    xy_r = rot90_points(xy, crop.shape[1])
    a, _ = est.compute(crop, xy, radii)
    b, _ = est.compute(rot, xy_r, radii)
    da, db = desc.compute(crop, xy, radii, a), desc.compute(rot, xy_r, radii, b)
    nearest = np.argmin(((da[:, None] - db[None]) ** 2).sum(-1), 1)
    assert (nearest == np.arange(len(xy))).mean() > 0.9
    upright_b = desc.compute(rot, xy_r, radii)  # without orientation they do not match
    assert (np.argmin(((da[:, None] - upright_b[None]) ** 2).sum(-1), 1) == np.arange(len(xy))).mean() < 0.5


def test_rootsift_is_square_root_of_l1_normalised_sift(crop: np.ndarray, sift_kps) -> None:
    xy, radii, angles = sift_kps
    sift = SIFTDescriptor().compute(crop, xy, radii, angles)
    root = make_descriptor("rootsift").compute(crop, xy, radii, angles)
    np.testing.assert_allclose(root, np.sqrt(sift / sift.sum(1, keepdims=True)), rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(root, axis=1), 1.0, rtol=1e-5)


def test_patch_network_file_architecture_found(tmp_path: Path) -> None:
    import kornia.feature as KF

    path = tmp_path / "hardnet.pth"
    torch.save(KF.HardNet(pretrained=False).state_dict(), path)
    desc = make_descriptor(str(path))
    assert desc.name == f"hardnet:{path}" and desc.dim == 128
    out = desc.compute(np.random.default_rng(0).random((80, 90), dtype=np.float32), np.array([[40.0, 45.0]]),
                       np.array([15.0]), np.array([45.0]))
    assert out.shape == (1, 128) and np.isclose(np.linalg.norm(out), 1.0)
    torch.save({"w": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="fits none"):
        load_patch_network(tmp_path / "other.pth")
    with pytest.raises(ValueError, match="unknown descriptor"):
        make_descriptor("surf")


def test_orinet_orientation_loads_local_weights(data_dir: Path, crop: np.ndarray, sift_kps) -> None:
    xy, radii, _ = sift_kps
    est = make_orientation("orinet")
    a, index = est.compute(crop, xy, radii)
    assert a.shape == (len(xy),) and np.all((a >= 0) & (a < 360)) and index.tolist() == list(range(len(xy)))
    b, _ = est.compute(np.ascontiguousarray(np.rot90(crop)), rot90_points(xy, crop.shape[1]), radii)
    assert (np.abs(angle_diff(b, a - 90)) < 15).mean() > 0.6  # a learned estimate: roughly equivariant


class Constant:
    """A descriptor of one's own: the Descriptor protocol is all the Extractor needs."""

    name, dim = "constant", 3

    def compute(self, image, keypoints, scales, angles=None):
        return np.ones((len(keypoints), 3), np.float32)


def test_extractor_outputs_and_batches(crop: np.ndarray) -> None:
    ext = Extractor(model="tiny", num_keypoints=150)
    out = ext.extract(crop, return_lafs=True)
    n = len(out["keypoints"])
    assert 0 < n <= 150
    shapes = {k: tuple(v.shape) for k, v in out.items()}
    assert shapes == {"keypoints": (n, 2), "scales": (n,), "orientations": (n,), "scores": (n,),
                      "descriptors": (n, 128), "image_size": (2,), "lafs": (n, 2, 3)}
    assert all(v.dtype == torch.float32 for v in out.values())
    assert out["image_size"].tolist() == [320, 240] and torch.all(out["scores"][1:] <= out["scores"][:-1])
    torch.testing.assert_close(out["lafs"], features_to_lafs(out["keypoints"], out["scales"], out["orientations"]))
    batch = torch.from_numpy(crop)[None, None].repeat(2, 1, 1, 1)
    outs = ext.extract(batch)
    assert len(outs) == 2
    for o in outs:
        torch.testing.assert_close(o["descriptors"], out["descriptors"])
    mine = Extractor(model="tiny", num_keypoints=50, descriptor=Constant(), orientation="upright").extract(crop)
    assert mine["descriptors"].shape == (len(mine["keypoints"]), 3) and torch.all(mine["orientations"] == 0)
    with pytest.raises(TypeError):
        Extractor(detector=ext.detector, num_keypoints=10)
