"""Images as model input (executors; the pure helpers run anywhere).

Two kinds of column carry images: Spark's ``image`` data source (a struct of ``origin``,
``height``, ``width``, ``nChannels``, ``mode`` and ``data``, colour pixels stored in
OpenCV's BGR order) and raw file bytes (``binaryFile``'s ``content``: PNG, JPEG, GIF or
BMP). :func:`image_batch` turns a batch of either into one float32 array of shape
``(rows, height, width, channels)`` with pixels in 0-255, RGB or grayscale as the model
needs, decoding and resizing with TensorFlow. A row that cannot be decoded becomes a
:class:`BadImage` naming its path, so that the caller raises a clear error or reports the
reason in an error column. A user's own ``imageLoader`` (a function of a path or of file
bytes returning the pixels) replaces the decoding and resizing: its array reaches the model
as it is (:func:`loaded_pixels`). The numpy helpers (:func:`bgr_to_rgb`, :func:`match_channels`,
:func:`struct_pixels`) need no TensorFlow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from tfos.errors import FeedDataError

#: OpenCV type codes that Spark's image source writes: 8-bit, 1, 3 or 4 channels.
_OPENCV_MODES = {0: 1, 16: 3, 24: 4}

#: ITU-R BT.601 luma weights, the ones tf.image.rgb_to_grayscale uses.
_LUMA = np.array([0.2989, 0.587, 0.114], dtype=np.float32)

IMAGE_FIELDS = ("origin", "height", "width", "nChannels", "mode", "data")


@dataclass(frozen=True)
class BadImage:
    """A row whose image could not be used: where it came from and why."""

    path: str
    reason: str

    def message(self) -> str:
        return f"image {self.path} could not be used: {self.reason}"


def bad_image_error(bad: BadImage, column: str, fix: str | None = None) -> FeedDataError:
    """The error for a bad image; names the path and the fix.

    Args:
        bad: the row's path and reason.
        column: where the image came from, for the message.
        fix: what the user can do (default: errorCol, which the Spark ML transformers have).
    """
    fix = fix or ("Fix or drop that file, or set errorCol to get a null output and the reason in that column "
                  "instead")
    return FeedDataError(f"{bad.message()} (column {column!r}). {fix}", path=bad.path)


def bgr_to_rgb(pixels: np.ndarray) -> np.ndarray:
    """Spark image-source pixels (BGR or BGRA, channels last) in RGB / RGBA order; grayscale as it is."""
    channels = pixels.shape[-1]
    if channels == 3:
        return pixels[..., ::-1]
    if channels == 4:
        return pixels[..., [2, 1, 0, 3]]
    return pixels


def match_channels(pixels: np.ndarray, channels: int) -> np.ndarray:
    """``pixels`` (H, W, C with C in 1-4, RGB order) as float32 with ``channels`` (1 or 3) channels.

    Alpha is dropped; grayscale is repeated into RGB; RGB becomes grayscale by BT.601 luma.
    """
    if channels not in (1, 3):
        raise ValueError(f"models take 1 (grayscale) or 3 (RGB) channels, not {channels}")
    pixels = np.asarray(pixels, dtype=np.float32)
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    have = pixels.shape[-1]
    if have in (2, 4):  # gray + alpha, RGB + alpha
        pixels = pixels[..., :have - 1]
        have -= 1
    if have not in (1, 3):
        raise ValueError(f"an image has {pixels.shape[-1]} channels; expected 1 to 4")
    if have == channels:
        return pixels
    if channels == 3:
        return np.repeat(pixels, 3, axis=-1)
    return (pixels @ _LUMA)[..., None]


def struct_pixels(height: int, width: int, n_channels: int, mode: int, data: bytes) -> np.ndarray:
    """The pixels of one Spark image struct as uint8 (height, width, channels) in RGB order.

    Raises:
        ValueError: the struct is an invalid image (Spark writes height -1 for files it
            could not decode) or its fields disagree.
    """
    if height is None or width is None or height <= 0 or width <= 0 or not data:
        raise ValueError("Spark's image source could not decode it (invalid image struct, height "
                         f"{height}, width {width})")
    if mode not in _OPENCV_MODES:
        raise ValueError(f"OpenCV mode {mode} is not supported (8-bit images with 1, 3 or 4 channels are)")
    channels = _OPENCV_MODES[mode]
    if n_channels != channels or len(data) != height * width * channels:
        raise ValueError(f"the struct holds {len(data)} bytes, not {height}x{width}x{channels} "
                         f"(nChannels {n_channels}, mode {mode})")
    pixels = np.frombuffer(data, dtype=np.uint8).reshape(height, width, channels)
    return bgr_to_rgb(pixels)


def decode_bytes(data: bytes) -> np.ndarray:
    """An encoded image (PNG, JPEG, GIF's first frame, BMP) as uint8 (height, width, channels)."""
    import tensorflow as tf

    if not data:
        raise ValueError("the file is empty")
    try:
        image = tf.io.decode_image(data, expand_animations=False)
    except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError) as exc:
        reason = str(exc.message if hasattr(exc, "message") else exc).strip().splitlines()[0]
        raise ValueError(f"TensorFlow cannot decode it as PNG, JPEG, GIF or BMP ({reason})") from None
    if image.dtype != tf.uint8:
        image = tf.image.convert_image_dtype(image, tf.uint8)
    return image.numpy()


def resize(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """float32 ``pixels`` (H, W, C) resized bilinearly to (height, width) with tf.image.resize."""
    if pixels.shape[0] == height and pixels.shape[1] == width:
        return pixels.astype(np.float32, copy=False)
    import tensorflow as tf

    return tf.image.resize(pixels, (height, width)).numpy()


def row_pixels(value: Any, path: str, size: tuple[int, int, int]) -> np.ndarray:
    """One row's image (an image-source dict or encoded bytes) as float32 (H, W, C) of ``size``."""
    height, width, channels = size
    if isinstance(value, dict):
        pixels = struct_pixels(value["height"], value["width"], value["nChannels"], value["mode"], value["data"])
    else:
        pixels = decode_bytes(value)
    return resize(match_channels(pixels, channels), height, width)


def loaded_pixels(loader: Callable[[Any], Any], value: Any, size: tuple[int, int, int]) -> np.ndarray:
    """What a user's ``imageLoader`` returns for one path or file's bytes, as float32 of ``size``.

    The array is used as it is: (height, width, channels), or with a leading batch dimension
    of 1 (Keras' ``img_to_array(...)[None]``), or (height, width) for a one-channel model.

    Raises:
        ValueError: the loader raised, or returned an array of another shape (the reason says which).
    """
    try:
        array = np.asarray(loader(value), dtype=np.float32)
    except Exception as exc:  # the user's code: report it against the row, as a decoding failure is
        raise ValueError(f"imageLoader raised {type(exc).__name__}: {exc}") from exc
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 2 and size[2] == 1:
        array = array[..., None]
    if tuple(array.shape) != tuple(size):
        raise ValueError(f"imageLoader returned an array of shape {tuple(array.shape)}; the model takes "
                         f"{tuple(size)} (height, width, channels): resize in the loader")
    return array


def image_batch(column: Any, paths: list[str], size: tuple[int, int, int],
                loader: Callable[[Any], Any] | None = None) -> tuple[np.ndarray, list[int], list[BadImage | None]]:
    """Decodes an Arrow column of images (struct or binary, or paths / bytes for ``loader``) into one batch.

    Args:
        column: a pyarrow StructArray of Spark's image schema, a BinaryArray of file bytes, or
            (with ``loader``) a StringArray of paths.
        paths: one label per row for error messages (the file's path, or where the row is).
        size: the model's (height, width, channels).
        loader: the user's imageLoader, called on each row's value instead of decoding it.

    Returns:
        ``(pixels, good, bad)``: float32 pixels (len(good), H, W, C) in 0-255, the indexes
        of the rows they came from, and per row ``None`` or the :class:`BadImage`.
    """
    rows = column.to_pylist()
    images, good, bad = [], [], []
    for index, value in enumerate(rows):
        if value is None:
            bad.append(BadImage(paths[index], "the image is null"))
            continue
        try:
            images.append(loaded_pixels(loader, value, size) if loader is not None
                          else row_pixels(value, paths[index], size))
        except ValueError as exc:
            bad.append(BadImage(paths[index], str(exc)))
            continue
        good.append(index)
        bad.append(None)
    pixels = np.stack(images) if images else np.zeros((0, *size), dtype=np.float32)
    return pixels, good, bad


def row_paths(column: Any, paths: Any, partition: int, offset: int) -> list[str]:
    """Labels for the rows of an image column: the struct's origin, the path column, or partition/row."""
    import pyarrow as pa

    if paths is not None:
        return [p if p else f"partition {partition} row {offset + i}" for i, p in enumerate(paths.to_pylist())]
    if pa.types.is_struct(column.type) and column.type.get_field_index("origin") >= 0:
        origins = column.field("origin").to_pylist()
        return [o if o else f"partition {partition} row {offset + i}" for i, o in enumerate(origins)]
    return [f"partition {partition} row {offset + i}" for i in range(len(column))]


def is_image_struct(data_type: Any) -> bool:
    """Whether a Spark type is the image data source's struct."""
    from pyspark.sql.types import StructType

    return isinstance(data_type, StructType) and set(IMAGE_FIELDS) <= set(data_type.fieldNames())
