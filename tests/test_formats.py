"""Feature formats, each read back by the library that owns it: cv2.KeyPoint (OpenCV), hloc's
features.h5 (h5py, as hloc's readers do), kornia LAFs (kornia), and keynet detect's npz (numpy)."""

from __future__ import annotations

from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import torch

from keynet.features import Extractor
from keynet.features.descriptors import SIFTDescriptor, to_uint8
from keynet.io.hloc import PARTIAL, FeatureFile
from keynet.io.image import load_image
from keynet.io.opencv import from_cv_keypoints, to_cv_keypoints


@pytest.fixture(scope="module")
def crop(data_dir: Path) -> np.ndarray:
    return load_image(data_dir / "oxford_affine" / "graf" / "img1.png")[200:440, 300:620].copy()


@pytest.fixture(scope="module")
def feats(crop: np.ndarray) -> dict[str, torch.Tensor]:
    return Extractor(model="tiny", num_keypoints=200).extract(crop, return_lafs=True)


def test_cv_keypoints_round_trip_and_feed_sift(crop: np.ndarray) -> None:
    sift = cv2.SIFT_create(nfeatures=200)
    img = to_uint8(crop)
    theirs = sift.detect(img, None)
    _, ref = sift.compute(img, theirs)
    ours = from_cv_keypoints(theirs)
    assert ours["scales"] == pytest.approx(3 * np.array([k.size for k in theirs]))
    # back to cv2.KeyPoint (size a diameter, angle in degrees, response, SIFT's packed octave):
    # SIFT.compute gives OpenCV's own descriptors, orientation included
    again = to_cv_keypoints(ours["keypoints"], ours["scales"], ours["orientations"], ours["scores"], pack_octave=True)
    fields = lambda kps: np.array([(*k.pt, k.size, k.angle, k.response) for k in kps])  # noqa: E731
    np.testing.assert_allclose(fields(again), fields(theirs), rtol=1e-6)
    _, desc = sift.compute(img, again)
    np.testing.assert_array_equal(desc, ref)
    np.testing.assert_array_equal(SIFTDescriptor().compute(crop, ours["keypoints"], ours["scales"], ours["orientations"]), ref)
    back = from_cv_keypoints(to_cv_keypoints(ours["keypoints"], ours["scales"], ours["orientations"], ours["scores"]))
    for k in ours:
        np.testing.assert_allclose(back[k], ours[k], rtol=1e-6)


def test_hloc_h5_read_as_hloc_does(tmp_path: Path, feats: dict[str, torch.Tensor]) -> None:
    path = tmp_path / "features.h5"
    with FeatureFile(path, {"descriptor": "sift"}) as f:
        f.write("a.png", feats)
        f.write("sub/dir/b.jpg", feats)
        assert "a.png" in f and "sub/dir/b.jpg" in f and "sub" not in f and "c.png" not in f
        assert f.names() == ["a.png", "sub/dir/b.jpg"]
    n = len(feats["keypoints"])
    with h5py.File(path, "r") as fd:
        # hloc.utils.io.list_h5_names: the parent group of every dataset
        names = set()
        fd.visititems(lambda _, obj: names.add(obj.parent.name.strip("/")) if isinstance(obj, h5py.Dataset) else None)
        assert names == {"a.png", "sub/dir/b.jpg"}
        for name in names:
            grp = fd[name]
            kps = grp["keypoints"].__array__()  # hloc.utils.io.get_keypoints
            assert kps.dtype == np.float32 and kps.shape == (n, 2) and grp["keypoints"].attrs.get("uncertainty") == 1.0
            np.testing.assert_array_equal(kps, feats["keypoints"].numpy())
            np.testing.assert_array_equal(grp["descriptors"][()], feats["descriptors"].numpy().T)  # (D, N)
            np.testing.assert_array_equal(grp["scores"][()], feats["scores"].numpy())
            assert grp["image_size"][()].tolist() == [320, 240]  # (W, H)
            np.testing.assert_array_equal(grp["orientations"][()], feats["orientations"].numpy())
            np.testing.assert_array_equal(grp["scales"][()], feats["scales"].numpy())


def test_hloc_h5_image_without_keypoints(tmp_path: Path) -> None:
    blank = Extractor(model="tiny").extract(np.full((120, 160), 0.5, np.float32))
    assert len(blank["keypoints"]) == 0 and blank["descriptors"].shape == (0, 128)
    with FeatureFile(tmp_path / "features.h5") as f:
        f.write("blank.png", blank)
        assert "blank.png" in f
    with h5py.File(tmp_path / "features.h5", "r") as fd:
        assert fd["blank.png/keypoints"].shape == (0, 2) and fd["blank.png/descriptors"].shape == (128, 0)


def test_hloc_h5_partial_group_is_not_an_image(tmp_path: Path, feats: dict[str, torch.Tensor]) -> None:
    path = tmp_path / "features.h5"
    with FeatureFile(path) as f:
        f.write("a.png", feats)
    with h5py.File(path, "a") as fd:  # what a run killed while writing b.png leaves
        fd.create_group(f"{PARTIAL}/x").create_dataset("keypoints", data=np.zeros((3, 2), np.float32))
    with FeatureFile(path) as f:
        assert f.names() == ["a.png"] and PARTIAL not in f._file
    with pytest.raises(ValueError, match="other settings"):
        with FeatureFile(path, {"descriptor": "sift"}) as f:
            pass  # features written without settings are not resumed as if they matched


def test_kornia_lafs_describe_the_keypoints(crop: np.ndarray, feats: dict[str, torch.Tensor]) -> None:
    import kornia.feature as KF

    lafs = feats["lafs"][None]
    torch.testing.assert_close(KF.get_laf_center(lafs)[0], feats["keypoints"])
    torch.testing.assert_close(KF.get_laf_scale(lafs)[0, :, 0, 0], feats["scales"])
    ori = torch.remainder(-KF.get_laf_orientation(lafs)[0, :, 0], 360.0)
    d = torch.remainder(ori - feats["orientations"] + 180, 360) - 180
    assert d.abs().max() < 1e-3


def test_npz_of_keynet_detect_matches_extract(tmp_path: Path, data_dir: Path, feats: dict[str, torch.Tensor]) -> None:
    from keynet import Extractor
    from keynet.cli import main

    crop_path = tmp_path / "crop.png"
    cv2.imwrite(str(crop_path), cv2.imread(str(data_dir / "oxford_affine" / "graf" / "img1.png"))[200:440, 300:620])
    assert main(["detect", str(crop_path), "--out", str(tmp_path / "det"), "--model", "tiny",
                 "--num-keypoints", "200", "--subpixel", "--level-gamma", "1", "--quiet",
                 "--input-std", str(Extractor.default_conf["input_std"])]) == 0  # the Extractor's defaults
    with np.load(tmp_path / "det" / "crop.npz") as npz:
        for k in ("keypoints", "scales", "scores"):
            np.testing.assert_allclose(npz[k], feats[k].numpy(), rtol=1e-5, atol=1e-4)
