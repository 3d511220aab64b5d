"""Opening images that anyone may have made: only the accepted formats, never decoded past a pixel limit.

Pillow's ``Image.open`` reads the header only; the size is checked there, before any pixel is decoded.
Every way Pillow fails on broken or hostile bytes becomes one ``ImageRefused`` with a one-line reason.
"""

from __future__ import annotations

import re
import struct

ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")
MAX_IMAGE_PIXELS = 4096 * 4096

# what Pillow's plugins and decoders raise on broken or hostile bytes (a corrupt PNG chunk: SyntaxError)
DECODE_ERRORS = (OSError, SyntaxError, ValueError, TypeError, IndexError, KeyError, EOFError, struct.error)


class ImageRefused(Exception):
    """An image that is not decoded, and why (one line)."""


def one_line(err: BaseException, limit: int = 200) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def decode_image(source, max_pixels: int = MAX_IMAGE_PIXELS):
    """The RGB image of ``source`` (a path or a binary file); ``ImageRefused`` for a format outside
    ``ACCEPTED_FORMATS``, more than ``max_pixels`` pixels, or bytes Pillow cannot decode."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(source, formats=ACCEPTED_FORMATS) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise ImageRefused(f"too many pixels ({width}x{height} = {width * height:,}; at most "
                                   f"{max_pixels:,})")
            return image.convert("RGB")
    except UnidentifiedImageError:
        raise ImageRefused(f"cannot decode image (not a {', '.join(ACCEPTED_FORMATS[:-1])} or "
                           f"{ACCEPTED_FORMATS[-1]} image)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:  # past Pillow's own limit
        counted = re.search(r"\((\d+) pixels\)", str(err))
        pixels = f"{int(counted[1]):,}" if counted else one_line(err)
        raise ImageRefused(f"too many pixels ({pixels}; at most {max_pixels:,})") from None
    except DECODE_ERRORS as err:
        raise ImageRefused(f"cannot decode image ({one_line(err)})") from None
