"""Every kind of bad or unusual input gets a clear, specific outcome."""

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from keynet import ImageError, KeyNetDetector, load_image

from .conftest import Identity


@pytest.fixture(scope="module")
def photo(data_dir):
    """An RGB uint8 photo (H, W, 3), RGB order."""
    bgr = cv2.imread(str(data_dir / "oxford_affine/graf/img1.png"))
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)[:120, :160]


@pytest.fixture
def detector():
    return KeyNetDetector(network=Identity())


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="image not found"):
        load_image(tmp_path / "nope.jpg")


def test_not_an_image(tmp_path):
    p = tmp_path / "notes.jpg"
    p.write_text("hello, not a picture")
    with pytest.raises(ImageError, match="cannot decode"):
        load_image(p)


def test_truncated_jpeg(tmp_path, photo):
    p = tmp_path / "cut.jpg"
    Image.fromarray(photo).save(p, quality=90)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated"):
        load_image(p)


def test_empty_file(tmp_path):
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    with pytest.raises(ImageError, match="0 bytes"):
        load_image(p)


def test_folder_instead_of_file(tmp_path):
    with pytest.raises(ImageError, match="not a file"):
        load_image(tmp_path)


def test_zero_size_array(detector):
    with pytest.raises(ImageError, match="zero size"):
        detector.detect(np.zeros((0, 10), np.uint8))


def test_too_small_image(detector):
    with pytest.raises(ImageError, match=r"20x25 px; the detector needs at least 31 px"):
        detector.detect(np.zeros((25, 20), np.uint8))


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_nan_or_infinity_in_float_array(detector, value):
    a = np.full((64, 64), 0.5, np.float32)
    a[3, 4] = value
    with pytest.raises(ImageError, match="NaN or infinite"):
        detector.detect(a)
    with pytest.raises(ImageError, match="NaN or infinite"):
        detector.detect(torch.from_numpy(a))


def test_float_outside_unit_range(detector):
    with pytest.raises(ImageError, match=r"\[0, 1\]"):
        detector.detect(np.full((64, 64), 200.0, np.float32))


def test_sixteen_bit_png_equals_eight_bit(tmp_path, photo):
    gray8 = cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY)
    cv2.imwrite(str(tmp_path / "g16.png"), gray8.astype(np.uint16) * 257)  # 257 maps 255 to 65535
    cv2.imwrite(str(tmp_path / "g8.png"), gray8)
    a, b = load_image(tmp_path / "g16.png"), load_image(tmp_path / "g8.png")
    assert a.dtype == np.float32 and a.shape == gray8.shape
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_rgba_png_ignores_alpha(tmp_path, photo):
    rgba = np.dstack([photo, np.full(photo.shape[:2], 7, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    Image.fromarray(photo).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(load_image(tmp_path / "a.png"), load_image(tmp_path / "rgb.png"))


def test_rgb_array_and_path_agree(tmp_path, photo):
    Image.fromarray(photo).save(tmp_path / "rgb.png")
    from keynet.io.image import to_float_gray

    np.testing.assert_allclose(to_float_gray(photo), load_image(tmp_path / "rgb.png"), atol=1 / 255 + 1e-6)


def test_exif_rotation_is_applied(tmp_path, photo):
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    Image.fromarray(photo).save(tmp_path / "r.jpg", exif=exif, quality=95)
    Image.fromarray(photo).save(tmp_path / "n.jpg", quality=95)
    rotated, plain = load_image(tmp_path / "r.jpg"), load_image(tmp_path / "n.jpg")
    assert plain.shape == photo.shape[:2]
    assert rotated.shape == photo.shape[1::-1]
    np.testing.assert_allclose(rotated, np.rot90(plain, k=-1), atol=2 / 255)


def test_bad_tensor_shapes_and_types(detector):
    with pytest.raises(ImageError, match="grayscale"):
        detector.detect(torch.rand(1, 3, 64, 64))
    with pytest.raises(ImageError, match="float"):
        detector.detect(torch.zeros(64, 64, dtype=torch.uint8))
    with pytest.raises(ImageError, match="unsupported image type"):
        detector.detect([[0.0]])


def test_missing_shipped_weights_message(tmp_path, monkeypatch):
    import keynet.weights as w

    monkeypatch.setattr(w, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="no shipped weights"):
        KeyNetDetector()


def bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width x height pixels (a decompression bomb's header)."""
    import struct
    import zlib

    ok, buf = cv2.imencode(".png", np.zeros((8, 8), np.uint8))
    data = bytearray(buf.tobytes())
    struct.pack_into(">II", data, 16, width, height)  # IHDR: length, type, then width and height
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb_png(60000, 60000))  # 3.6 Gpx declared
    with pytest.raises(ImageError, match="decompression bomb"):
        load_image(path)


def test_decoding_bytes_equals_reading_the_file(tmp_path, photo):
    from keynet.io.image import decode_image

    path = tmp_path / "p.jpg"
    cv2.imwrite(str(path), photo)
    np.testing.assert_array_equal(decode_image(path.read_bytes(), "p.jpg"), load_image(path))
    with pytest.raises(ImageError, match="empty file"):
        decode_image(b"", "nothing.png")
