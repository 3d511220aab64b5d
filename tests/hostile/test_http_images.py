"""Hostile images and inputs sent to a real server (in this process) of a tiny V&L run: image bombs,
broken and refused formats, image paths that leave --image-dir or break the file system's calls, fields
past --max-input-chars, a lone surrogate echoed in an error. Each is a 4xx naming its instance, and the
server answers a normal request afterwards."""

import base64
import io
import os
import struct
import threading
import time
import zlib

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from PIL import Image  # noqa: E402

from helpers.serving import call, in_process_server  # noqa: E402
from helpers.vl import VL_METHOD, draw_images, train_vl  # noqa: E402

QUESTION = "what color is the shape?"
# as in a served process, where the engine turns Pillow's warning into an error (pytest resets filters)
pytestmark = pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(side: int = 13000) -> bytes:
    """A valid side x side 1-bit black PNG: ~20 KB for 13000 (169 M pixels, ~507 MB as RGB)."""
    row, packer = b"\0" * ((side + 7) // 8 + 1), zlib.compressobj(9)
    pixels = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def saved(format: str, size=(64, 64), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, 200).save(buffer, format)
    return buffer.getvalue()


def broken_chunk_png() -> bytes:
    """A PNG whose second chunk has a type that is no chunk name: Pillow raises SyntaxError on load."""
    good = saved("PNG")
    start = good.index(b"IDAT") - 4
    length = struct.unpack(">I", good[start:start + 4])[0]
    half = good[start + 8:start + 8 + length // 2]
    return good[:start] + chunk(b"IDAT", half) + b"\0\0\0\x05\x01\x02\x03\x04junk"


def gif_bomb() -> bytes:
    """A GIF header that declares a 65535 x 65535 screen and image: 4.3 G pixels, in 29 bytes."""
    return (b"GIF89a" + struct.pack("<HHBBB", 65535, 65535, 0, 0, 0) + b","
            + struct.pack("<HHHHB", 0, 0, 65535, 65535, 0) + b"\x02\x02\x44\x01\x00;")


def encoded(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def vl_server(tmp_path_factory):
    """(the base URL, the image folder) of a server of a tiny V&L run, --image-dir holding red.png,
    blue.png, a folder, a symbolic link out of it and a FIFO."""
    tmp_path = tmp_path_factory.mktemp("vl_images")
    paths, cache = draw_images(tmp_path)
    overrides = ["data.tasks=[easy_vqa]", f"data.feature_cache={cache}", "data.max_train_examples=8",
                 "data.max_eval_examples=4", *VL_METHOD]
    _, run = train_vl(tmp_path, "vl", overrides)
    images = tmp_path / "images"
    (images / "folder").mkdir(parents=True)
    (images / "red.png").write_bytes(paths["red"].read_bytes())
    (images / "out.png").symlink_to(paths["blue"])  # a real image, but outside --image-dir
    os.mkfifo(images / "pipe.png")
    with in_process_server(run, image_dir=str(images)) as (_, base):
        yield base, images


def predict(base: str, instance: dict):
    return call(base + "/v1/predict", {"instances": [normal(), instance]})


def normal(**fields) -> dict:
    return {"task": "easy_vqa", "question": QUESTION, "image_path": "red.png", **fields}


HOSTILE = {
    "png_bomb_13000x13000": (normal(image=encoded(png_bomb()), image_path=None), 422, "invalid_image",
                             "169,000,000; at most 16,777,216)"),
    "png_5000x5000_past_the_limit": (normal(image=encoded(png_bomb(5000)), image_path=None), 422,
                                     "invalid_image", "(5000x5000 = 25,000,000; at most 16,777,216)"),
    "gif_bomb_header": (normal(image=encoded(gif_bomb()), image_path=None), 422, "invalid_image",
                        "too many pixels"),
    "truncated_png": (normal(image=encoded(saved("PNG")[:-40]), image_path=None), 422, "invalid_image",
                      "truncated"),
    "png_chunk_syntax_error": (normal(image=encoded(broken_chunk_png()), image_path=None), 422,
                               "invalid_image", "broken PNG file"),
    "eps": (normal(image=encoded(saved("EPS")), image_path=None), 422, "invalid_image",
            "not a PNG, JPEG, WEBP, BMP or GIF image"),
    "tiff": (normal(image=encoded(saved("TIFF")), image_path=None), 422, "invalid_image",
             "not a PNG, JPEG, WEBP, BMP or GIF image"),
    "base64_of_text": (normal(image=encoded(b"hello, world"), image_path=None), 422, "invalid_image",
                       "cannot decode image"),
    "not_base64": (normal(image="not base64!", image_path=None), 400, "invalid_image", "not base64"),
    "nul_in_image_path": (normal(image_path="red.png\0.png"), 422, "invalid_image", "image folder"),
    "image_path_5000_chars": (normal(image_path="a" * 5000), 422, "invalid_image", "image folder"),
    "image_path_lone_surrogate": (normal(image_path="\ud800.png"), 422, "invalid_image", "\\ud800"),
    "symlink_out_of_image_dir": (normal(image_path="out.png"), 422, "invalid_image", "image folder"),
    "directory_as_image_path": (normal(image_path="folder"), 422, "invalid_image", "image folder"),
    "fifo_as_image_path": (normal(image_path="pipe.png"), 422, "invalid_image", "image folder"),
    "unknown_task_lone_surrogate": (normal(task="\ud800"), 422, "unknown_task", "task '\\ud800'"),
    "field_20001_chars": (normal(question="a" * 20_001), 413, "field_too_long",
                          "field 'question' has 20,001 characters; at most 20,000"),
    "text_form_20001_chars": ({"task": "easy_vqa", "text": "a" * 20_001, "image_path": "red.png"}, 413,
                              "field_too_long", "field 'text' has 20,001"),
    "field_not_a_string": (normal(question=["a"]), 400, "invalid_type", "must be a string"),
    "field_lone_surrogate": (normal(question="what \ud800 color?"), 400, "invalid_type",
                             "field 'question' is no Unicode text: it holds a lone surrogate ('\\ud800')"),
    "text_form_lone_surrogate": ({"task": "easy_vqa", "text": "\udfff", "image_path": "red.png"}, 400,
                                 "invalid_type", "field 'text' is no Unicode text"),
}


@pytest.mark.parametrize("instance, status, error_type, says", HOSTILE.values(), ids=HOSTILE.keys())
def test_a_hostile_instance_is_refused_by_name_and_the_server_answers_on(vl_server, instance, status,
                                                                          error_type, says):
    base, _ = vl_server
    instance = {key: value for key, value in instance.items() if value is not None}
    got, body, _ = predict(base, instance)
    assert got == status, body
    assert body["error_type"] == error_type and body["instance"] == 1, body
    assert says in body["error"], body
    got, body, _ = predict(base, normal())
    assert got == 200 and len(body["predictions"]) == 2, body


def test_fields_of_20000_characters_are_answered_as_fields_of_their_first_tokens(vl_server):
    base, _ = vl_server
    long = QUESTION + " " + "a" * (20_000 - len(QUESTION) - 1)
    got, body, _ = predict(base, normal(question=long))
    assert got == 200, body
    got, by_text, _ = predict(base, {"task": "easy_vqa", "text": long, "image_path": "red.png"})
    assert got == 200 and by_text["predictions"] == body["predictions"]


def resident_bytes() -> int:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


def test_a_png_bomb_is_refused_from_its_header_while_health_answers(vl_server):
    base, _ = vl_server
    bomb = {"instances": [normal(image=encoded(png_bomb()), image_path=None)] * 32}
    assert call(base + "/v1/predict", bomb)[0] == 422  # first use: the libraries' own allocations
    before, replies, started = resident_bytes(), [], time.monotonic()

    def send():
        replies.extend(call(base + "/v1/predict", bomb)[0] for _ in range(8))

    sender = threading.Thread(target=send)
    sender.start()
    while sender.is_alive():
        asked = time.monotonic()
        assert call(base + "/health")[0] == 200 and time.monotonic() - asked < 5
    sender.join()
    assert replies == [422] * 8 and time.monotonic() - started < 30
    assert resident_bytes() - before < 50 * 2**20
