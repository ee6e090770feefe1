"""preprocess: decoding, windowing, channel conversion, resize equivalence, hashing."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest

from lepton_vision.config.errors import DataError
from lepton_vision.data.preprocess import (
    content_hash,
    load_for_model,
    read_image,
    to_model_input,
    to_uint8,
    window_hu,
)


# ------------------------------------------------------------------ read_image


def test_read_gray_color_rgba_16bit(tmp_path):
    gray = np.arange(20, dtype=np.uint8).reshape(4, 5)
    cv2.imwrite(str(tmp_path / "g.png"), gray)
    out = read_image(tmp_path / "g.png")
    assert out.dtype == np.uint8 and out.shape == (4, 5)
    np.testing.assert_array_equal(out, gray)

    bgr = np.zeros((4, 4, 3), np.uint8)
    bgr[..., 0] = 200  # OpenCV writes BGR: this is blue
    cv2.imwrite(str(tmp_path / "c.png"), bgr)
    rgb = read_image(tmp_path / "c.png")
    assert rgb.shape == (4, 4, 3)
    assert (rgb[..., 2] == 200).all() and (rgb[..., 0] == 0).all()

    bgra = np.dstack([bgr, np.full((4, 4), 7, np.uint8)])
    cv2.imwrite(str(tmp_path / "a.png"), bgra)
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), rgb)

    deep = np.tile(np.array([[0, 1000], [40000, 65535]], np.uint16), (2, 2))
    cv2.imwrite(str(tmp_path / "d.png"), deep)
    out16 = read_image(tmp_path / "d.png")
    assert out16.dtype == np.uint16
    np.testing.assert_array_equal(out16, deep)

    cv2.imwrite(str(tmp_path / "j.jpg"), np.full((8, 8, 3), 128, np.uint8))
    assert read_image(tmp_path / "j.jpg").shape == (8, 8, 3)


@pytest.mark.parametrize(
    "name, content, expect",
    [
        ("bad.png", b"this is not a png at all", "cannot decode"),
        ("empty.jpg", b"", "empty"),
        ("movie.gif", b"GIF89a....", "unsupported file type '.gif'"),
        ("dot.png", cv2.imencode(".png", np.zeros((1, 1), np.uint8))[1].tobytes(), "at least 4 px"),
        # A JPEG cut off after its header: the decoder gives up, the file is named.
        ("cut.jpg", cv2.imencode(".jpg", np.full((64, 64, 3), 99, np.uint8))[1].tobytes()[:200], "cannot decode"),
    ],
)
def test_bad_files_name_the_file(tmp_path, name, content, expect):
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(DataError) as err:
        read_image(p)
    assert expect in str(err.value)
    assert name in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="file not found") as err:
        read_image(tmp_path / "nope.png")
    assert "nope.png" in str(err.value)


def test_too_many_pixels(tmp_path):
    cv2.imwrite(str(tmp_path / "big.png"), np.zeros((10, 10), np.uint8))
    with pytest.raises(DataError, match="max_image_pixels=99") as err:
        read_image(tmp_path / "big.png", max_pixels=99)
    assert "big.png" in str(err.value) and "10x10" in str(err.value)
    assert read_image(tmp_path / "big.png", max_pixels=100).shape == (10, 10)


def test_read_dicom_gives_hu(tmp_path, write_ct_dicom):
    stored = np.tile(np.array([[0, 1024], [1064, 2024]], np.int16), (2, 2))  # 4x4: the smallest accepted
    p = write_ct_dicom(tmp_path / "ct.dcm", stored)
    hu = read_image(p)
    assert hu.dtype == np.float32
    np.testing.assert_array_equal(hu, np.tile([[-1024, 0], [40, 1000]], (2, 2)))
    # mediastinum window (40, 400): -1024 -> 0, 0 -> floor(160/400*255+.5)=102, 40 -> 128, 1000 -> 255
    np.testing.assert_array_equal(to_uint8(hu, 1, (40, 400))[..., 0], np.tile([[0, 102], [128, 255]], (2, 2)))
    tiny = write_ct_dicom(tmp_path / "tiny.dcm", np.zeros((1, 1), np.int16))
    with pytest.raises(DataError, match="1x1 px"):
        read_image(tiny)
    corrupt = tmp_path / "corrupt.dcm"
    corrupt.write_bytes(b"\0" * 128 + b"DICM" + b"garbage")
    with pytest.raises(DataError) as err:
        read_image(corrupt)
    assert "corrupt.dcm" in str(err.value)


# ------------------------------------------------------------------ to_uint8


def test_window_hand_values():
    hu = np.array([-1000.0, -160.0, -159.0, 40.0, 239.0, 240.0, 3000.0])
    # level 40, width 400: low edge -160; x -> floor((x + 160) / 400 * 255 + 0.5)
    np.testing.assert_array_equal(window_hu(hu, 40, 400), [0, 0, 1, 128, 254, 255, 255])
    # lung (-600, 1500): 0 HU -> 1350/1500*255 = 229.5 -> 230 (half rounds up)
    assert window_hu(np.array([0.0]), -600, 1500)[0] == 230
    assert window_hu(hu, 40, 400).dtype == np.uint8
    with pytest.raises(ValueError):
        to_uint8(hu.reshape(1, -1).astype(np.float32), 1)  # HU needs a window


def test_uint16_and_channel_conversion():
    deep = np.array([[0, 257 * 100], [32767, 65535]], np.uint16)
    # 32767/65535*255 = 127.498 -> 127; 257*k -> exactly k
    np.testing.assert_array_equal(to_uint8(deep, 1)[..., 0], [[0, 100], [127, 255]])

    rgb = np.array([[[255, 0, 0], [0, 255, 0]], [[10, 20, 30], [0, 0, 255]]], np.uint8)
    gray = to_uint8(rgb, 1)
    assert gray.shape == (2, 2, 1) and gray.dtype == np.uint8
    # 0.2989*255=76.22 -> 76; 0.587*255=149.69 -> 150; 2.989+11.74+3.42=18.149 -> 18; 29.07 -> 29
    np.testing.assert_array_equal(gray[..., 0], [[76, 150], [18, 29]])

    g = np.array([[1, 2], [3, 4]], np.uint8)
    three = to_uint8(g, 3)
    assert three.shape == (2, 2, 3)
    for c in range(3):
        np.testing.assert_array_equal(three[..., c], g)
    np.testing.assert_array_equal(to_uint8(rgb, 3), rgb)


# ------------------------------------------------------------------ to_model_input


def test_resize_2x2_to_4x4_by_hand():
    img = np.array([[0, 100], [100, 200]], np.uint8)[:, :, None]
    out = to_model_input(img, (4, 4))
    assert out.shape == (4, 4, 1) and out.dtype == np.float32
    # bilinear with half-pixel centres, edges clamped: 1-D [a, b] -> [a, .75a+.25b, .25a+.75b, b]
    expected = np.array(
        [[0, 25, 75, 100], [25, 50, 100, 125], [75, 100, 150, 175], [100, 125, 175, 200]], np.float32
    )
    np.testing.assert_allclose(out[..., 0], expected / 255, atol=1e-6)


def test_model_input_keeps_channels_and_range(tmp_path):
    img = np.random.default_rng(0).integers(0, 256, (30, 20, 3), dtype=np.uint8)
    out = to_model_input(img, (16, 24))
    assert out.shape == (16, 24, 3) and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    cv2.imwrite(str(tmp_path / "x.png"), img[:, :, ::-1])
    got = load_for_model(tmp_path / "x.png", (16, 24), 3)
    np.testing.assert_array_equal(got, out)
    assert load_for_model(tmp_path / "x.png", (8, 8), 1).shape == (8, 8, 1)


def test_content_hash(tmp_path):
    a, b, c = tmp_path / "a.bin", tmp_path / "b.bin", tmp_path / "c.bin"
    a.write_bytes(b"same")
    b.write_bytes(b"same")
    c.write_bytes(b"other")
    assert content_hash(a) == content_hash(b) != content_hash(c)
    assert len(content_hash(a)) == 40


def test_data_modules_do_not_import_tensorflow():
    code = (
        "import sys\n"
        "import lepton_vision.data.samples, lepton_vision.data.folds, lepton_vision.data.augment, lepton_vision.data.preprocess\n"
        "import lepton_vision.data.augment as a; a.transform_names()\n"
        "bad = [m for m in ('tensorflow', 'keras', 'gradio') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_cmyk_jpeg_is_read_as_rgb(tmp_path):
    """Policy: CMYK JPEGs (print workflows) are converted to RGB by the decoder, not refused."""
    from PIL import Image

    Image.new("CMYK", (8, 6), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")  # pure red in CMYK
    rgb = read_image(tmp_path / "cmyk.jpg")
    assert rgb.shape == (6, 8, 3) and rgb.dtype == np.uint8
    assert rgb[..., 0].mean() > 200 and rgb[..., 1].mean() < 60 and rgb[..., 2].mean() < 60
