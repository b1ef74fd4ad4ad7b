import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from keynet import Extractor, KeyNetDetector
from keynet.eval.calibration import rotation_offset
from keynet.weights import SHIPPED_OFFSETS

from .conftest import found_in
from .test_detector import blob_image


class ShiftedDown(nn.Module):
    """A 'network' whose response is the image moved down by one pixel: every maximum lies one
    level pixel below its blob, a bias of (0, +1) level pixels."""

    def forward(self, x):
        return F.pad(x, (0, 0, 1, 0))[..., :-1, :]


def blobs(seed=0, side=192):
    rng = np.random.default_rng(seed)
    centres = [(x + rng.uniform(-3, 3), y + rng.uniform(-3, 3)) for x in range(24, side - 20, 24) for y in range(24, side - 20, 24)]
    return blob_image(side, side, centres, sigma=3.0)


def test_a_known_bias_is_measured_and_cancelled():
    images = [blobs(0), blobs(1)]
    det = KeyNetDetector(network=ShiftedDown(), subpixel=True, border=8)
    dx, dy = rotation_offset(det, images)
    assert dx == pytest.approx(0.0, abs=1e-3) and dy == pytest.approx(-1.0, abs=1e-3)
    # the result includes the detector's own offset: with the bias cancelled it is the same offset
    fixed = KeyNetDetector(network=ShiftedDown(), subpixel=True, border=8, offset=(dx, dy))
    assert rotation_offset(fixed, images) == pytest.approx((dx, dy), abs=1e-3)
    # and the fixed detector's keypoints are where the unbiased 'network' puts them (but for a
    # maximum that the shift moved across a level's border)
    plain = KeyNetDetector(network=nn.Identity(), subpixel=True, border=8).detect(images[0])
    assert found_in(fixed.detect(images[0]), plain, tol=1e-4).float().mean() > 0.99


def test_textureless_images_are_refused():
    with pytest.raises(ValueError, match="no keypoint was found again"):
        rotation_offset(KeyNetDetector(network=nn.Identity()), [np.zeros((64, 64), np.float32)])


@pytest.mark.parametrize("model", ["keynet", "tiny"])
def test_the_shipped_calibration_holds_on_other_photos(model, data_dir):
    # Photos the calibration did not use (the validation split's, not the training split's).
    from keynet.train.synthesis import list_images, split_images

    photos = split_images(list_images(data_dir / "train_images"), 0, 0.05, "val")[:8]
    det = KeyNetDetector(model=model, subpixel=True, level_gamma=1.0)
    assert rotation_offset(det, photos) == pytest.approx(SHIPPED_OFFSETS[model], abs=0.1)


def test_the_extractor_takes_the_shipped_calibration_for_the_shipped_weights_only():
    from keynet.weights import shipped_weights_path

    assert Extractor().detector.conf["offset"] == (0.0, 0.0)  # the network's own positions by default
    assert Extractor(offset="shipped").detector.conf["offset"] == SHIPPED_OFFSETS["keynet"]
    assert Extractor(model="tiny", offset="shipped").detector.conf["offset"] == SHIPPED_OFFSETS["tiny"]
    assert Extractor(offset=(0.1, 0.2)).detector.conf["offset"] == (0.1, 0.2)
    with pytest.raises(ValueError, match="shipped .* weights only"):
        Extractor(weights=shipped_weights_path("keynet"), offset="shipped")
