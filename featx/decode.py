"""Decode image files into the 8-bit RGB arrays the model expects.

Every stored form (grayscale, palette, RGBA, CMYK, 16-bit, EXIF-rotated) ends
as a 224x224 RGB ``uint8`` array plus a small grayscale thumbnail for the
raw-pixel baseline. JPEG files are decoded at a reduced scale (1/2, 1/4 or
1/8, by libjpeg's DCT scaling) whenever the reduced image still has at least
224 pixels on its short side, which is several times faster on large X-rays.
"""

from __future__ import annotations

import dataclasses
import io
import warnings

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from featx.config import INPUT_SIZE, RAW_SIZE

# Pillow's own limit is a guard against decompression bombs from untrusted
# sources. Here the files are the user's own, so featx applies its own limit
# below, after reduced-size JPEG decoding has been taken into account.
Image.MAX_IMAGE_PIXELS = None

#: Largest image, in pixels after any reduced-size decoding, that is decoded.
#: 16-bit RGB at this size needs about 3 GB; larger files are skipped.
MAX_DECODED_PIXELS = 250_000_000

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

#: Endings of Pillow raw modes with 16 bits per sample ("RGB;16B", "RGBA;16N").
#: Pillow loads such colour files as 8-bit RGB or RGBA. "BGR;16" (a 16-bit BMP
#: pixel of 5 or 6 bits per channel) has no byte-order letter, so it does not match.
_16BIT_RAWMODE_SUFFIXES = (";16B", ";16L", ";16N")

#: Parts of Pillow's error messages (checked with Pillow 13.0) for pixel data
#: that is cut short or corrupt, as opposed to a stored form it does not support.
_CORRUPT_DATA_MESSAGES = (
    "truncated",
    "broken data stream",
    "unrecognized data stream",
    "buffer overrun",
    "decoder error",
)

# OpenCV threads would compete with the decoding threads and the model.
cv2.setNumThreads(1)


class DecodeError(Exception):
    """The file could not be decoded; the message is the reason, for the skip list."""


@dataclasses.dataclass
class DecodedImage:
    """One decoded image and what is known about the stored file.

    Attributes
    ----------
    pixels : ndarray of shape (224, 224, 3), dtype uint8
        RGB, resized without preserving the aspect ratio.
    raw : ndarray of shape (1024,), dtype uint8
        32x32 grayscale thumbnail, row-major, for the raw-pixel baseline.
    width, height : int
        Size of the stored image in pixels, before EXIF rotation.
    channels : int
        Channels as stored (1 gray, 2 gray+alpha, 3 colour, 4 with alpha or CMYK).
    bit_depth : int
        Bits per channel as stored (1, 8 or 16; 32 for integer or float images).
    format : str
        Container format as named by Pillow ("JPEG", "PNG", ...).
    """

    pixels: np.ndarray
    raw: np.ndarray
    width: int
    height: int
    channels: int
    bit_depth: int
    format: str


_MODE_CHANNELS = {"1": 1, "L": 1, "P": 1, "I": 1, "F": 1, "LA": 2, "La": 2, "PA": 2,
                  "RGB": 3, "YCbCr": 3, "LAB": 3, "HSV": 3, "RGBA": 4, "RGBa": 4,
                  "CMYK": 4}


def decode_image(
    data: bytes, input_size: int = INPUT_SIZE, raw_size: int = RAW_SIZE
) -> DecodedImage:
    """Decode the bytes of an image file.

    Parameters
    ----------
    data : bytes
        The whole file.
    input_size : int
        Side of the square RGB output in pixels.
    raw_size : int
        Side of the square grayscale thumbnail in pixels.

    Raises
    ------
    DecodeError
        When the file is empty, is not an image, is truncated, or its decoder fails.
    """
    if not data:
        raise DecodeError("empty file (0 bytes)")
    if data.startswith(_PNG_SIGNATURE):
        _check_png_complete(data)
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise DecodeError("not an image: no decoder recognises the content") from None
    except (OSError, ValueError, SyntaxError) as error:
        raise _pillow_decode_error(error) from None

    width, height = image.size
    stored_mode = image.mode
    stored_rawmode = _tile_rawmode(image)
    file_format = image.format or "unknown"
    try:
        if file_format == "JPEG":
            # Picks the smallest DCT scale whose size still covers input_size
            # on both sides, so the short side stays at least input_size.
            image.draft(image.mode, (input_size, input_size))
        pixel_count = image.size[0] * image.size[1]
        if pixel_count > MAX_DECODED_PIXELS:
            raise DecodeError(
                f"image too large to decode: {width}x{height} pixels "
                f"(the limit is {MAX_DECODED_PIXELS:,} pixels)"
            )
        with warnings.catch_warnings():
            # A few valid files carry EXIF or ICC data that Pillow warns about.
            warnings.simplefilter("ignore")
            image.load()
            image = ImageOps.exif_transpose(image)
        rgb = _to_rgb8(image)
    except DecodeError:
        raise
    except Image.DecompressionBombError as error:
        raise DecodeError(f"image too large to decode: {error}") from None
    except (OSError, ValueError, SyntaxError, TypeError, MemoryError) as error:
        rgb = _decode_with_opencv(data, error)

    pixels = _resize(rgb, input_size)
    gray = cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY)
    raw = _resize(gray, raw_size).reshape(-1)
    return DecodedImage(
        pixels=pixels,
        raw=raw,
        width=width,
        height=height,
        channels=_MODE_CHANNELS.get(stored_mode, 1 if stored_mode.startswith("I;16") else 3),
        bit_depth=_bit_depth(stored_mode, stored_rawmode),
        format=file_format,
    )


def _check_png_complete(data: bytes) -> None:
    """Raise DecodeError unless the chunks of a PNG file run up to a whole IEND chunk.

    Pillow stops reading after the last IDAT chunk, so a PNG cut within its
    last few bytes (IEND, the IDAT checksums) would otherwise decode without error.
    """
    offset = len(_PNG_SIGNATURE)
    while offset + 12 <= len(data):
        if data[offset + 4:offset + 8] == b"IEND":
            return
        offset += 12 + int.from_bytes(data[offset:offset + 4], "big")
    raise DecodeError("truncated file: the PNG data ends before its IEND chunk")


def _pillow_decode_error(error: Exception) -> DecodeError:
    """Return the DecodeError for an error Pillow raised on bad file content."""
    message = str(error)
    if "truncated" in message.lower():
        return DecodeError(f"truncated file: {message}")
    return DecodeError(f"decoder failed: {message}")


def _tile_rawmode(image: Image.Image) -> str:
    """Return the raw mode of the stored pixels ("RGB;16B" for 16-bit RGB PNG), or ""."""
    if not image.tile:
        return ""
    args = image.tile[0][3]
    rawmode = args[0] if isinstance(args, tuple) else args
    return rawmode if isinstance(rawmode, str) else ""


def _bit_depth(mode: str, rawmode: str) -> int:
    if rawmode.endswith(_16BIT_RAWMODE_SUFFIXES):
        return 16
    if mode == "1":
        return 1
    if mode.startswith("I;16"):
        return 16
    if mode in ("I", "F"):
        return 32
    return 8


def _to_rgb8(image: Image.Image) -> np.ndarray:
    """Convert a loaded Pillow image to an (H, W, 3) uint8 RGB array.

    High-bit-depth images are scaled by the full range of their type
    (65535 maps to 255), not truncated to their low byte.

    NOTE: Pillow loads 16-bit RGB and RGBA already as 8-bit by keeping the
    high byte, which can be one level below the rounded scaling used here.
    """
    mode = image.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        values = np.asarray(image)
        if mode == "F":
            low, high = float(np.nanmin(values)), float(np.nanmax(values))
            scaled = (values - low) / (high - low or 1.0) * 255.0
        else:
            # Older Pillow versions load 16-bit PNGs in mode "I".
            maximum = 65535.0 if values.max(initial=0) <= 65535 else float(np.iinfo(np.int32).max)
            scaled = np.clip(values, 0, None) * (255.0 / maximum)
        gray = np.rint(scaled).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # The alpha channel is dropped, not composited: in X-rays and scans
        # it is an export artefact, and the colour values are the picture.
        image = image.convert("RGBA") if mode != "RGBA" else image
        return np.ascontiguousarray(np.asarray(image)[:, :, :3])
    if mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image)


def _decode_with_opencv(data: bytes, pillow_error: Exception) -> np.ndarray:
    """Decode with OpenCV a file that Pillow opened but could not load or convert."""
    message = str(pillow_error)
    if any(fragment in message for fragment in _CORRUPT_DATA_MESSAGES):
        # OpenCV 5.1 returns a mostly black image for a TIFF with corrupt LZW
        # data after logging the libtiff error, so falling back would accept it.
        raise _pillow_decode_error(pillow_error)
    buffer = np.frombuffer(data, dtype=np.uint8)
    flags = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR
    array = cv2.imdecode(buffer, flags)
    if array is None:
        raise DecodeError(f"decoder failed: {pillow_error}")
    if array.dtype == np.uint16:
        array = np.rint(array * (255.0 / 65535.0)).astype(np.uint8)
    elif array.dtype != np.uint8:
        raise DecodeError(f"unsupported pixel type {array.dtype}: {pillow_error}")
    if array.ndim == 2:
        return cv2.cvtColor(array, cv2.COLOR_GRAY2RGB)
    if array.shape[2] == 4:
        return cv2.cvtColor(array, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(array, cv2.COLOR_BGR2RGB)


def _resize(array: np.ndarray, size: int) -> np.ndarray:
    """Resize to size x size; area averaging when shrinking avoids aliasing."""
    height, width = array.shape[:2]
    if (height, width) == (size, size):
        return np.ascontiguousarray(array)
    shrinking = height >= size and width >= size
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC
    return cv2.resize(array, (size, size), interpolation=interpolation)
