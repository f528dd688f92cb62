"""Pure image helpers of tfos.ml (no Spark, no TensorFlow): BGR -> RGB, channels, image structs."""

from __future__ import annotations

import numpy as np
import pytest

from tfos.ml._images import BadImage, bad_image_error, bgr_to_rgb, match_channels, struct_pixels


def test_bgr_to_rgb_reverses_colour_and_keeps_alpha_and_gray():
    bgr = np.array([[[1, 2, 3]]], dtype=np.uint8)
    assert bgr_to_rgb(bgr).tolist() == [[[3, 2, 1]]]
    bgra = np.array([[[1, 2, 3, 9]]], dtype=np.uint8)
    assert bgr_to_rgb(bgra).tolist() == [[[3, 2, 1, 9]]]
    gray = np.array([[[7]]], dtype=np.uint8)
    assert bgr_to_rgb(gray).tolist() == [[[7]]]


def test_match_channels_converts_between_gray_rgb_and_alpha():
    rgb = np.array([[[10, 20, 30]]], dtype=np.uint8)
    assert match_channels(rgb, 3).dtype == np.float32
    assert match_channels(rgb, 3).tolist() == [[[10, 20, 30]]]
    gray = match_channels(rgb, 1)
    assert gray.shape == (1, 1, 1) and gray[0, 0, 0] == pytest.approx(0.2989 * 10 + 0.587 * 20 + 0.114 * 30, rel=1e-5)
    assert match_channels(np.array([[[5]]]), 3).tolist() == [[[5, 5, 5]]]
    assert match_channels(np.array([[5]]), 1).shape == (1, 1, 1)  # 2-D grayscale gets its channel axis
    assert match_channels(np.array([[[10, 20, 30, 255]]]), 3).tolist() == [[[10, 20, 30]]]  # alpha dropped
    assert match_channels(np.array([[[8, 255]]]), 3).tolist() == [[[8, 8, 8]]]  # gray + alpha
    with pytest.raises(ValueError, match="1 \\(grayscale\\) or 3 \\(RGB\\)"):
        match_channels(rgb, 4)
    with pytest.raises(ValueError, match="5 channels"):
        match_channels(np.zeros((1, 1, 5)), 3)


def test_struct_pixels_reads_spark_image_structs_in_rgb_order():
    h, w = 2, 3
    bgr = np.arange(h * w * 3, dtype=np.uint8).reshape(h, w, 3)
    pixels = struct_pixels(h, w, 3, 16, bgr.tobytes())
    assert pixels.shape == (2, 3, 3) and (pixels == bgr[..., ::-1]).all()
    gray = struct_pixels(h, w, 1, 0, bytes(range(6)))
    assert gray.shape == (2, 3, 1) and gray[1, 2, 0] == 5
    bgra = np.arange(h * w * 4, dtype=np.uint8).reshape(h, w, 4)
    assert (struct_pixels(h, w, 4, 24, bgra.tobytes()) == bgra[..., [2, 1, 0, 3]]).all()


def test_struct_pixels_refuses_invalid_structs_clearly():
    with pytest.raises(ValueError, match="could not decode it"):
        struct_pixels(-1, -1, -1, -1, b"")  # what Spark's image source writes for a bad file
    with pytest.raises(ValueError, match="OpenCV mode 5 is not supported"):
        struct_pixels(1, 1, 1, 5, b"\x00")
    with pytest.raises(ValueError, match="holds 5 bytes, not 1x2x3"):
        struct_pixels(1, 2, 3, 16, b"\x00" * 5)


def test_bad_image_error_names_the_path_and_the_fix():
    err = bad_image_error(BadImage("file:/data/broken.png", "the file is empty"), "content")
    assert "image file:/data/broken.png could not be used: the file is empty" in str(err)
    assert "set errorCol" in str(err) and err.path == "file:/data/broken.png"
