"""Opening images anyone may have made: accepted formats only, refused from the header past the pixel
limit (never decoded), every Pillow failure one ``ImageRefused``; and ``open_image``'s one-line errors."""

import contextlib
import io
import struct
import warnings
import zlib

import pytest
from PIL import Image, ImageFile

from hyperpelt.errors import UserError
from hyperpelt.vision.folder import open_image
from hyperpelt.vision.images import ImageRefused, decode_image


def saved(format: str, size=(40, 30), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, (10, 200, 30) if mode == "RGB" else 3).save(buffer, format)
    return buffer.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A 1-bit PNG's signature and IHDR (and a little zlib data): all Pillow reads before decoding."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


@pytest.mark.parametrize("format, mode", [("PNG", "RGB"), ("JPEG", "RGB"), ("WEBP", "RGB"), ("BMP", "RGB"),
                                          ("GIF", "P"), ("PNG", "1"), ("PNG", "RGBA")])
def test_the_accepted_formats_decode_to_rgb(format, mode):
    image = decode_image(io.BytesIO(saved(format, mode=mode)))
    assert (image.mode, image.size) == ("RGB", (40, 30))


@pytest.mark.parametrize("format", ["EPS", "TIFF", "ICO", "PPM", "TGA", "PDF"])
def test_other_formats_are_refused_without_trying_their_decoder(format):
    with pytest.raises(ImageRefused, match="not a PNG, JPEG, WEBP, BMP or GIF image"):
        decode_image(io.BytesIO(saved(format)))


@pytest.mark.parametrize("width, height, max_pixels, says", [
    (13000, 13000, 4096 * 4096, "169,000,000; at most 16,777,216)"),  # past Pillow's warning limit too
    (5000, 5000, 4096 * 4096, "(5000x5000 = 25,000,000; at most 16,777,216)"),
    (41, 30, 40 * 30, "(41x30 = 1,230; at most 1,200)"),
])
def test_an_image_past_the_limit_is_refused_from_its_header_before_any_pixel_is_decoded(
        monkeypatch, width, height, max_pixels, says):
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("decoded"))
    bomb = width * height > Image.MAX_IMAGE_PIXELS
    with pytest.warns(Image.DecompressionBombWarning) if bomb else contextlib.nullcontext():
        with pytest.raises(ImageRefused, match="too many pixels") as refused:
            decode_image(io.BytesIO(png_header(width, height)), max_pixels)
    assert says in str(refused.value)


def test_an_image_at_the_limit_decodes():
    assert decode_image(io.BytesIO(saved("PNG")), 40 * 30).size == (40, 30)


def test_pillows_bomb_error_and_its_warning_made_an_error_are_refusals():
    gif = (b"GIF89a" + struct.pack("<HHBBB", 65535, 65535, 0, 0, 0) + b","
           + struct.pack("<HHHHB", 0, 0, 65535, 65535, 0) + b"\x02\x02\x44\x01\x00;")
    with pytest.raises(ImageRefused, match=r"too many pixels \(4,294,836,225; at most"):
        decode_image(io.BytesIO(gif))
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with pytest.raises(ImageRefused, match=r"too many pixels \(169,000,000; at most"):
            decode_image(io.BytesIO(png_header(13000, 13000)), 10**9)


@pytest.mark.parametrize("data, says", [
    (saved("PNG")[:-40], "image file is truncated"),
    (saved("PNG")[:20], "Truncated File Read"),
    (saved("JPEG")[:200], "cannot decode image"),
    (b"", "not a PNG"),
    (b"hello, world", "not a PNG"),
])
def test_broken_bytes_are_refusals_with_a_reason(data, says):
    with pytest.raises(ImageRefused, match="cannot decode image") as refused:
        decode_image(io.BytesIO(data))
    assert says in str(refused.value) and "\n" not in str(refused.value)


def test_open_image_names_the_file_in_one_line(tmp_path):
    (tmp_path / "bomb.png").write_bytes(png_header(5000, 5000))
    (tmp_path / "doc.png").write_bytes(saved("EPS"))
    (tmp_path / "fine.png").write_bytes(saved("PNG"))
    assert open_image(tmp_path / "fine.png").size == (40, 30)
    with pytest.raises(UserError, match=rf"^{tmp_path}/bomb.png: too many pixels \(5000x5000"):
        open_image(tmp_path / "bomb.png")
    with pytest.raises(UserError, match=rf"^{tmp_path}/doc.png: cannot decode image \(not a PNG"):
        open_image(tmp_path / "doc.png")
    too_many = r"too many pixels \(40x30 = 1,200; at most 100\)$"
    with pytest.raises(UserError, match=rf"^{tmp_path}/fine.png: {too_many}"):
        open_image(tmp_path / "fine.png", max_pixels=100)
    with pytest.raises(UserError, match=rf"^{tmp_path}: cannot decode image \("):
        open_image(tmp_path)
