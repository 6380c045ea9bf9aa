"""decode_image and the extract loop on generated files.

Covers stored forms of one picture (gray, alpha, palette, 16-bit, CMYK,
progressive, EXIF-rotated, BMP, TIFF, WebP), reduced-size decoding of a large
JPEG, files that must be skipped with a reason, and unusual paths
(non-ASCII names, spaces, symbolic links). Every file is written by the test.
"""

import errno
import io
import os
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image, ImageDraw, JpegImagePlugin

import featx
from featx.decode import DecodeError, decode_image
from tests.conftest import textured_image, write_image
from tests.test_pipeline import run_extract

WIDTH, HEIGHT = 640, 480
EXIF_ORIENTATION = 0x0112


def smooth_picture(width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """Return an RGB picture of gradients with a rectangle and a disc.

    It is smooth, so lossy encoders stay close to it, and no rotation or flip
    maps it onto itself, so a wrong EXIF rotation shows.
    """
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    red = 255.0 * x / (width - 1)
    green = 255.0 * y / (height - 1)
    blue = 128.0 + 100.0 * np.sin(x / 90.0) * np.cos(y / 70.0)
    picture = np.stack([red, green, blue], axis=-1)
    picture[height // 8:height * 5 // 12, width // 8:width * 2 // 5] = (230, 30, 40)
    disc = (x - width * 0.73) ** 2 + (y - height * 0.69) ** 2 < (height / 6) ** 2
    picture[disc] = (20, 40, 220)
    return np.clip(np.rint(picture), 0, 255).astype(np.uint8)


def encode(image: Image.Image, file_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, file_format, **options)
    return buffer.getvalue()


def encode_with_opencv(array: np.ndarray, extension: str) -> bytes:
    """Encode an RGB (or gray) array with OpenCV, which keeps uint16 samples."""
    if array.ndim == 3:
        array = array[:, :, ::-1]
    ok, buffer = cv2.imencode(extension, np.ascontiguousarray(array))
    assert ok
    return buffer.tobytes()


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(np.abs(a.astype(np.int16) - b.astype(np.int16))))


def decode_error(data: bytes) -> str:
    """Return the reason decode_image gives for rejecting data."""
    with pytest.raises(DecodeError) as raised:
        decode_image(data)
    return str(raised.value)


@pytest.fixture(scope="module")
def picture() -> np.ndarray:
    return smooth_picture()


@pytest.fixture(scope="module")
def gray_picture(picture) -> np.ndarray:
    return np.asarray(Image.fromarray(picture).convert("L"))


def rgba_picture(picture):
    # Alpha runs from 0 (fully transparent) at the top to 255 at the bottom,
    # so compositing onto any background would change the top rows.
    alpha = np.linspace(0, 255, HEIGHT).astype(np.uint8)[:, None].repeat(WIDTH, axis=1)
    return Image.fromarray(np.dstack([picture, alpha]))


def gray_alpha_picture(picture):
    gray = Image.fromarray(picture).convert("L")
    alpha = Image.fromarray(np.full((HEIGHT, WIDTH), 0, np.uint8))
    return Image.merge("LA", [gray, alpha])


def gray16_picture(picture):
    gray = np.asarray(Image.fromarray(picture).convert("L"))
    return Image.fromarray(gray.astype(np.uint16) * 257)


def rgb16_array(picture):
    return picture.astype(np.uint16) * 257


def with_exif_orientation(picture, orientation):
    # Store the picture turned the opposite way, so that a viewer applying the
    # tag shows the original. Tag 6 means "turn 90 degrees clockwise to view",
    # and tag 8 means counter-clockwise.
    turns = {6: 1, 8: -1}[orientation]
    stored = Image.fromarray(np.ascontiguousarray(np.rot90(picture, turns)))
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    return encode(stored, "JPEG", quality=90, exif=exif)


# Each bound limits the mean absolute difference, in 8-bit levels over all
# 224x224x3 values, to the decoded plain RGB PNG. Lossless forms must match
# exactly. With Pillow 13.0 and OpenCV 5.1 this picture measured 0.49 for JPEG,
# where 4:2:0 chroma subsampling blurs the red rectangle's edges, and 0.19 for
# CMYK JPEG, which is stored without subsampling. WebP measured 0.78. The
# palette form measured 3.9, because a 256-colour median-cut palette cannot
# contain every shade of three gradients. The thumbnail differences were lower.
# The bounds leave about 1.5x to 2x headroom for other encoder versions,
# and stay far below the 20+ levels of a wrong picture (see the flip test).
VARIANTS = {
    # name: (make the file from the RGB picture, reference, format, channels, bit depth, bound)
    "gray": (lambda p: encode(Image.fromarray(p).convert("L"), "PNG"), "gray", "PNG", 1, 8, 0.0),
    "gray alpha": (lambda p: encode(gray_alpha_picture(p), "PNG"), "gray", "PNG", 2, 8, 0.0),
    "rgba": (lambda p: encode(rgba_picture(p), "PNG"), "rgb", "PNG", 4, 8, 0.0),
    "palette": (
        lambda p: encode(Image.fromarray(p).quantize(256), "PNG"),
        "rgb", "PNG", 1, 8, 5.0,
    ),
    "16-bit gray png": (lambda p: encode(gray16_picture(p), "PNG"), "gray", "PNG", 1, 16, 0.0),
    "16-bit gray tiff": (lambda p: encode(gray16_picture(p), "TIFF"), "gray", "TIFF", 1, 16, 0.0),
    "16-bit rgb png": (lambda p: encode_with_opencv(rgb16_array(p), ".png"), "rgb", "PNG", 3, 16, 0.0),
    "16-bit rgb tiff": (lambda p: encode_with_opencv(rgb16_array(p), ".tiff"), "rgb", "TIFF", 3, 16, 0.0),
    "cmyk jpeg": (
        lambda p: encode(Image.fromarray(p).convert("CMYK"), "JPEG", quality=90),
        "rgb", "JPEG", 4, 8, 0.5,
    ),
    "baseline jpeg": (lambda p: encode(Image.fromarray(p), "JPEG", quality=90), "rgb", "JPEG", 3, 8, 1.0),
    "progressive jpeg": (
        lambda p: encode(Image.fromarray(p), "JPEG", quality=90, progressive=True),
        "rgb", "JPEG", 3, 8, 1.0,
    ),
    "bmp": (lambda p: encode(Image.fromarray(p), "BMP"), "rgb", "BMP", 3, 8, 0.0),
    "tiff": (lambda p: encode(Image.fromarray(p), "TIFF"), "rgb", "TIFF", 3, 8, 0.0),
    "lzw tiff": (
        lambda p: encode(Image.fromarray(p), "TIFF", compression="tiff_lzw"),
        "rgb", "TIFF", 3, 8, 0.0,
    ),
    "webp": (lambda p: encode(Image.fromarray(p), "WEBP", quality=90), "rgb", "WEBP", 3, 8, 1.5),
    "lossless webp": (lambda p: encode(Image.fromarray(p), "WEBP", lossless=True), "rgb", "WEBP", 3, 8, 0.0),
}


@pytest.fixture(scope="module")
def references(picture, gray_picture):
    """Decoded plain 8-bit RGB PNGs of the picture and of its gray version."""
    gray_rgb = np.repeat(gray_picture[:, :, None], 3, axis=2)
    return {
        "rgb": decode_image(encode(Image.fromarray(picture), "PNG")),
        "gray": decode_image(encode(Image.fromarray(gray_rgb), "PNG")),
    }


def test_reference_png_decoded_as_stored(references):
    reference = references["rgb"]
    assert reference.pixels.shape == (224, 224, 3)
    assert reference.pixels.dtype == np.uint8
    assert reference.raw.shape == (1024,)
    assert reference.raw.dtype == np.uint8
    assert (reference.width, reference.height) == (WIDTH, HEIGHT)
    assert reference.channels == 3
    assert reference.bit_depth == 8
    assert reference.format == "PNG"


@pytest.mark.parametrize("name", VARIANTS)
def test_variant_matches_plain_png(name, picture, references):
    make, reference_name, _, _, _, bound = VARIANTS[name]
    decoded = decode_image(make(picture))
    reference = references[reference_name]
    assert decoded.pixels.shape == (224, 224, 3)
    assert decoded.pixels.dtype == np.uint8
    assert mean_abs_diff(decoded.pixels, reference.pixels) <= bound
    assert mean_abs_diff(decoded.raw, reference.raw) <= bound


@pytest.mark.parametrize("name", VARIANTS)
def test_variant_metadata(name, picture):
    make, _, file_format, channels, bit_depth, _ = VARIANTS[name]
    decoded = decode_image(make(picture))
    assert decoded.format == file_format
    assert decoded.channels == channels
    assert decoded.bit_depth == bit_depth
    assert decoded.width == WIDTH
    assert decoded.height == HEIGHT


def test_alpha_dropped_not_composited(picture, references):
    decoded = decode_image(encode(rgba_picture(picture), "PNG"))
    np.testing.assert_array_equal(decoded.pixels, references["rgb"].pixels)


def test_wrong_picture_exceeds_bounds(picture, references):
    # The bounds above must be far below the difference to a wrong picture,
    # here the same picture flipped upside down.
    flipped = encode(Image.fromarray(np.ascontiguousarray(picture[::-1])), "PNG")
    decoded = decode_image(flipped)
    assert mean_abs_diff(decoded.pixels, references["rgb"].pixels) > 20


def sixteen_bit_bands() -> np.ndarray:
    """Return a 448x448 uint16 image of four vertical bands, full scale to zero.

    The bands shrink to exactly 56 columns each at 224x224. With low-byte
    truncation 32768 and 16384 would both become 0.
    """
    bands = np.zeros((448, 448), np.uint16)
    bands[:, 0:112] = 65535
    bands[:, 112:224] = 32768
    bands[:, 224:336] = 16384
    return bands


SIXTEEN_BIT_ENCODERS = {
    "gray png": lambda bands: encode(Image.fromarray(bands), "PNG"),
    "gray tiff": lambda bands: encode(Image.fromarray(bands), "TIFF"),
    "little-endian gray tiff": lambda bands: encode_with_opencv(bands, ".tiff"),
    "rgb png": lambda bands: encode_with_opencv(np.dstack([bands] * 3), ".png"),
    "rgb tiff": lambda bands: encode_with_opencv(np.dstack([bands] * 3), ".tiff"),
}


@pytest.mark.parametrize("name", SIXTEEN_BIT_ENCODERS)
def test_16bit_scaled_by_full_range(name):
    decoded = decode_image(SIXTEEN_BIT_ENCODERS[name](sixteen_bit_bands()))
    assert decoded.bit_depth == 16
    row = decoded.pixels[112]
    assert row[28].tolist() == [255, 255, 255]
    assert row[84].tolist() == [128, 128, 128]
    assert row[140].tolist() == [64, 64, 64]
    assert row[196].tolist() == [0, 0, 0]


def rgb565_bmp(width: int = 64, height: int = 48) -> bytes:
    """Return a BMP with 16 bits per pixel: 5 red, 6 green and 5 blue (BI_BITFIELDS)."""
    y, x = np.mgrid[0:height, 0:width]
    red = x * 31 // (width - 1)
    green = y * 63 // (height - 1)
    pixels = ((red << 11) | (green << 5) | 16).astype("<u2")
    # BMP rows run bottom-up, and rows of 128 bytes need no padding.
    rows = pixels[::-1].tobytes()
    masks = struct.pack("<III", 0xF800, 0x07E0, 0x001F)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 16, 3, len(rows), 2835, 2835, 0, 0)
    offset = 14 + len(info) + len(masks)
    header = b"BM" + struct.pack("<IHHI", offset + len(rows), 0, 0, offset)
    return header + info + masks + rows


def test_rgb565_bmp_not_16bit():
    # 16 bits per pixel is not 16 bits per channel.
    decoded = decode_image(rgb565_bmp())
    assert decoded.format == "BMP"
    assert decoded.channels == 3
    assert decoded.bit_depth < 16
    assert decoded.pixels[0, -1, 0] == 255
    assert decoded.pixels[-1, 0, 1] == 255


@pytest.mark.parametrize("orientation", [6, 8])
def test_exif_rotation_applied(orientation, picture, references):
    decoded = decode_image(with_exif_orientation(picture, orientation))
    assert mean_abs_diff(decoded.pixels, references["rgb"].pixels) <= 1.0


@pytest.mark.parametrize("orientation", [6, 8])
def test_exif_rotated_size_as_stored(orientation, picture):
    decoded = decode_image(with_exif_orientation(picture, orientation))
    assert (decoded.width, decoded.height) == (HEIGHT, WIDTH)
    assert decoded.format == "JPEG"


def test_exif_tag_changes_result(picture):
    # Without the tag the stored, turned picture is what comes out, so the
    # rotation test above would fail if the tag were ignored.
    stored = Image.fromarray(np.ascontiguousarray(np.rot90(picture, 1)))
    untagged = decode_image(encode(stored, "JPEG", quality=90))
    tagged = decode_image(with_exif_orientation(picture, 6))
    assert mean_abs_diff(untagged.pixels, tagged.pixels) > 20


LARGE_SIDE = 12000


@pytest.fixture(scope="module")
def large_jpeg():
    """A smooth 12000x12000 grayscale JPEG and its 224x224 area-average downscale.

    Grayscale keeps the raster at 144 MB while it is encoded, and the JPEG
    itself is about 2 MB. Generation took 0.5 s on a 16-core x86 machine.
    """
    gradient = Image.linear_gradient("L").rotate(30, resample=Image.Resampling.BILINEAR, expand=False)
    large = gradient.resize((LARGE_SIDE, LARGE_SIDE), Image.Resampling.BILINEAR)
    ImageDraw.Draw(large).rectangle((1500, 7000, 5000, 10500), fill=40)
    ImageDraw.Draw(large).ellipse((7000, 1000, 11000, 5000), fill=230)
    reference = np.asarray(large.resize((224, 224), Image.Resampling.BOX))
    data = encode(large, "JPEG", quality=90)
    large.close()
    return data, reference


def test_large_jpeg_decoded_at_eighth_scale(large_jpeg, monkeypatch):
    data, _ = large_jpeg
    sizes_after_draft = []
    original_draft = JpegImagePlugin.JpegImageFile.draft

    def recording_draft(self, mode, size):
        result = original_draft(self, mode, size)
        sizes_after_draft.append(self.size)
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", recording_draft)
    decoded = decode_image(data)
    # libjpeg's smallest DCT scale is 1/8, so Pillow decodes 1500x1500 pixels
    # instead of 144 megapixels.
    assert sizes_after_draft == [(LARGE_SIDE // 8, LARGE_SIDE // 8)]
    assert (decoded.width, decoded.height) == (LARGE_SIDE, LARGE_SIDE)
    assert decoded.channels == 1


def test_large_jpeg_close_to_downscale(large_jpeg):
    data, reference = large_jpeg
    decoded = decode_image(data)
    # Measured 0.14 levels (Pillow 13.0) against the area average of the full
    # raster, because DCT scaling averages much like INTER_AREA on a smooth picture.
    assert mean_abs_diff(decoded.pixels[:, :, 0], reference) <= 1.0
    assert np.array_equal(decoded.pixels[:, :, 0], decoded.pixels[:, :, 2])


def test_draft_keeps_short_side_covered():
    # At 1/2 scale a 600x2000 JPEG has a short side of 300, and at 1/4 it
    # would have 150, less than the 224 that the model needs.
    data = encode(Image.fromarray(smooth_picture(600, 2000)), "JPEG", quality=90)
    image = Image.open(io.BytesIO(data))
    image.draft(image.mode, (224, 224))
    assert image.size == (300, 1000)
    assert decode_image(data).pixels.shape == (224, 224, 3)


def png_chunks(data: bytes):
    """Yield (offset, length, type) of each chunk of a PNG file."""
    offset = 8
    while offset < len(data):
        length = struct.unpack(">I", data[offset:offset + 4])[0]
        yield offset, length, data[offset + 4:offset + 8]
        offset += 12 + length


def with_png_chunk_data(data: bytes, chunk_type: bytes, edit) -> bytes:
    """Return a PNG with the data of its first chunk_type chunk replaced by edit(data), CRC fixed."""
    for offset, length, found_type in png_chunks(data):
        if found_type == chunk_type:
            body = edit(bytearray(data[offset + 8:offset + 8 + length]))
            crc = struct.pack(">I", zlib.crc32(chunk_type + bytes(body)))
            header = struct.pack(">I", len(body)) + chunk_type
            return data[:offset] + header + bytes(body) + crc + data[offset + 12 + length:]
    raise AssertionError(f"no {chunk_type!r} chunk")


@pytest.fixture(scope="module")
def sample_png(picture) -> bytes:
    return encode(Image.fromarray(picture), "PNG")


@pytest.fixture(scope="module")
def sample_jpeg(picture) -> bytes:
    return encode(Image.fromarray(picture), "JPEG", quality=90)


def jpeg_cuts(data: bytes) -> dict[str, int]:
    start_of_scan = data.index(b"\xff\xda")
    assert data.endswith(b"\xff\xd9")
    return {
        "inside first scan": start_of_scan + 40,
        "half": len(data) // 2,
        "before end marker": len(data) - 2,
        "inside end marker": len(data) - 1,
    }


def png_cuts(data: bytes) -> dict[str, int]:
    assert data.endswith(b"IEND\xaeB`\x82")
    return {
        "inside IHDR": 20,
        "half": len(data) // 2,
        "inside zlib checksum": len(data) - 12 - 4 - 2,
        "inside IDAT CRC": len(data) - 12 - 2,
        "before IEND": len(data) - 12,
        "inside IEND CRC": len(data) - 2,
    }


@pytest.mark.parametrize("cut", ["inside first scan", "half", "before end marker", "inside end marker"])
def test_truncated_jpeg_rejected(cut, sample_jpeg):
    data = sample_jpeg[:jpeg_cuts(sample_jpeg)[cut]]
    assert decode_error(data).startswith("truncated file: ")


@pytest.mark.parametrize(
    "cut", ["inside IHDR", "half", "inside zlib checksum", "inside IDAT CRC", "before IEND", "inside IEND CRC"]
)
def test_truncated_png_rejected(cut, sample_png):
    data = sample_png[:png_cuts(sample_png)[cut]]
    assert decode_error(data).startswith("truncated file: ")


def test_png_without_iend_rejected(sample_png):
    # Every pixel is still present, and only the 12-byte IEND chunk is missing.
    reason = decode_error(sample_png[:-12])
    assert reason == "truncated file: the PNG data ends before its IEND chunk"


def test_png_trailing_bytes_accepted(sample_png, references):
    decoded = decode_image(sample_png + b"\x00" * 16)
    np.testing.assert_array_equal(decoded.pixels, references["rgb"].pixels)


def test_empty_file_rejected():
    assert decode_error(b"") == "empty file (0 bytes)"


def test_text_rejected():
    text = b"This is a note about the scans, not a scan.\n" * 20
    assert decode_error(text) == "not an image: no decoder recognises the content"


def test_random_bytes_rejected():
    noise = np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    assert decode_error(noise) == "not an image: no decoder recognises the content"


def corrupt_png(sample_png: bytes) -> bytes:
    """Zero a run of compressed bytes in IDAT and fix the CRC, so only zlib detects the damage."""

    def zero_run(body):
        body[100:140] = b"\x00" * 40
        return body

    return with_png_chunk_data(sample_png, b"IDAT", zero_run)


def corrupt_jpeg(sample_jpeg: bytes) -> bytes:
    """Fill the code counts of the first Huffman table with 0xFF, which no decoder accepts."""
    table = sample_jpeg.index(b"\xff\xc4")
    data = bytearray(sample_jpeg)
    data[table + 5:table + 21] = b"\xff" * 16
    return bytes(data)


def corrupt_lzw_tiff(picture: np.ndarray) -> bytes:
    """Overwrite the middle of the LZW strip data with 0xFF bytes, which are invalid codes."""
    data = bytearray(encode(Image.fromarray(picture), "TIFF", compression="tiff_lzw"))
    middle = len(data) // 2
    data[middle:middle + 60] = b"\xff" * 60
    return bytes(data)


def test_corrupt_png_data_rejected(sample_png):
    reason = decode_error(corrupt_png(sample_png))
    assert reason == "decoder failed: broken data stream when reading image file"


def test_corrupt_jpeg_table_rejected(sample_jpeg):
    reason = decode_error(corrupt_jpeg(sample_jpeg))
    assert reason.startswith("decoder failed: ")


def test_corrupt_tiff_not_rescued_by_opencv(picture):
    # OpenCV 5.1 returns a mostly black image for this file after logging a
    # libtiff error, so decode_image must not fall back to OpenCV here.
    reason = decode_error(corrupt_lzw_tiff(picture))
    assert reason.startswith("decoder failed: ")


def test_oversized_header_rejected(sample_png):
    def claim_20000_square(body):
        body[0:8] = struct.pack(">II", 20000, 20000)
        return body

    data = with_png_chunk_data(sample_png, b"IHDR", claim_20000_square)
    reason = decode_error(data)
    assert reason.startswith("image too large to decode: 20000x20000 pixels")


def test_bad_files_skipped_by_extract(tmp_path, picture, sample_png, sample_jpeg):
    folder = tmp_path / "data" / "scans"
    write_image(folder / "good.png", picture)
    bad_files = {
        "empty.png": b"",
        "cut before end marker.jpg": sample_jpeg[:-2],
        "cut in half.jpg": sample_jpeg[:len(sample_jpeg) // 2],
        "cut before IEND.png": sample_png[:-12],
        "cut in half.png": sample_png[:len(sample_png) // 2],
        "notes.png": b"This is a note about the scans, not a scan.\n",
        "noise.jpg": np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "corrupt data.png": corrupt_png(sample_png),
        "corrupt strips.tif": corrupt_lzw_tiff(picture),
    }
    for name, data in bad_files.items():
        (folder / name).write_bytes(data)

    summary = run_extract(tmp_path / "data", tmp_path / "cache.h5")

    assert summary.n_embedded == 1
    reasons = dict(summary.skipped)
    assert sorted(reasons) == sorted(f"scans/{name}" for name in bad_files)
    assert reasons["scans/empty.png"] == "empty file (0 bytes)"
    assert reasons["scans/cut before end marker.jpg"].startswith("truncated file: ")
    assert reasons["scans/cut in half.jpg"].startswith("truncated file: ")
    assert reasons["scans/cut before IEND.png"].startswith("truncated file: ")
    assert reasons["scans/cut in half.png"].startswith("truncated file: ")
    assert reasons["scans/notes.png"] == "not an image: no decoder recognises the content"
    assert reasons["scans/noise.jpg"] == "not an image: no decoder recognises the content"
    assert reasons["scans/corrupt data.png"].startswith("decoder failed: ")
    assert reasons["scans/corrupt strips.tif"].startswith("decoder failed: ")

    cache = featx.load_cache(tmp_path / "cache.h5")
    assert list(cache.paths) == ["scans/good.png"]
    assert dict(cache.skipped) == reasons


def test_non_ascii_paths_extracted(tmp_path):
    data_dir = tmp_path / "datos con espacios"
    write_image(data_dir / "Neumonía" / "radiografía 1.png", textured_image((90, 90, 90), 1))
    write_image(data_dir / "Neumonía" / "año 2024" / "placa lateral.jpg", textured_image((60, 60, 60), 2))
    write_image(data_dir / "Normal" / "tórax sano.png", textured_image((200, 200, 200), 3))

    summary = run_extract(data_dir, tmp_path / "caché.h5")

    assert summary.skipped == []
    assert summary.n_embedded == 3
    cache = featx.load_cache(tmp_path / "caché.h5")
    assert cache.label_names == ["Neumonía", "Normal"]
    assert sorted(cache.paths) == [
        "Neumonía/año 2024/placa lateral.jpg",
        "Neumonía/radiografía 1.png",
        "Normal/tórax sano.png",
    ]


def make_symlink(link, target, target_is_directory=False):
    try:
        os.symlink(target, link, target_is_directory=target_is_directory)
    except (OSError, NotImplementedError) as error:
        pytest.skip(f"symbolic links are not available here: {error}")


def test_symlinked_file_and_folder_followed(tmp_path):
    data_dir = tmp_path / "data"
    write_image(data_dir / "scans" / "own.png", textured_image((90, 90, 90), 1))
    write_image(tmp_path / "elsewhere" / "single.png", textured_image((60, 60, 60), 2))
    write_image(tmp_path / "shared" / "a.png", textured_image((120, 120, 120), 3))
    write_image(tmp_path / "shared" / "b.jpg", textured_image((150, 150, 150), 4))
    make_symlink(data_dir / "scans" / "linked.png", tmp_path / "elsewhere" / "single.png")
    make_symlink(data_dir / "scans" / "shared", tmp_path / "shared", target_is_directory=True)

    summary = run_extract(data_dir, tmp_path / "cache.h5")

    assert summary.skipped == []
    assert summary.n_embedded == 4
    cache = featx.load_cache(tmp_path / "cache.h5")
    assert sorted(cache.paths) == [
        "scans/linked.png", "scans/own.png", "scans/shared/a.png", "scans/shared/b.jpg",
    ]


def test_symlink_loop_walked_once(tmp_path):
    # Both links lead back to the class folder. Following them again would
    # list every image again under a longer path, dozens of levels deep.
    data_dir = tmp_path / "data"
    write_image(data_dir / "scans" / "own.png", textured_image((90, 90, 90), 1))
    write_image(data_dir / "scans" / "sub" / "inner.png", textured_image((60, 60, 60), 2))
    make_symlink(data_dir / "scans" / "itself", ".", target_is_directory=True)
    make_symlink(data_dir / "scans" / "sub" / "back", "..", target_is_directory=True)

    summary = run_extract(data_dir, tmp_path / "cache.h5")

    assert summary.skipped == []
    cache = featx.load_cache(tmp_path / "cache.h5")
    assert sorted(cache.paths) == ["scans/own.png", "scans/sub/inner.png"]


def test_file_symlink_loop_skipped(tmp_path):
    data_dir = tmp_path / "data"
    write_image(data_dir / "scans" / "own.png", textured_image((90, 90, 90), 1))
    make_symlink(data_dir / "scans" / "ping.png", "pong.png")
    make_symlink(data_dir / "scans" / "pong.png", "ping.png")

    summary = run_extract(data_dir, tmp_path / "cache.h5")

    assert summary.n_embedded == 1
    reason = f"cannot read file: {os.strerror(errno.ELOOP)}"
    assert sorted(summary.skipped) == [("scans/ping.png", reason), ("scans/pong.png", reason)]


def test_broken_symlink_skipped(tmp_path):
    data_dir = tmp_path / "data"
    write_image(data_dir / "scans" / "own.png", textured_image((90, 90, 90), 1))
    make_symlink(data_dir / "scans" / "moved.png", tmp_path / "no such file.png")

    summary = run_extract(data_dir, tmp_path / "cache.h5")

    assert summary.n_embedded == 1
    assert summary.skipped == [("scans/moved.png", f"cannot read file: {os.strerror(errno.ENOENT)}")]
    cache = featx.load_cache(tmp_path / "cache.h5")
    assert cache.skipped == [("scans/moved.png", f"cannot read file: {os.strerror(errno.ENOENT)}")]
