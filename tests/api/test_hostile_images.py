"""Hostile and unusual images: each gets a clear 4xx or a clean conversion, and the server
keeps serving."""

import base64
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from conftest import image_b64, image_bytes
from pipelines.images import InvalidImage, decode_base64, open_image


def png_with_size(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose header claims another size (a decompression bomb's header)."""
    data = bytearray(image_bytes(width=1, height=1))
    ihdr = 8 + 8  # signature, then length and type of the IHDR chunk
    data[ihdr:ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr - 4:ihdr + 13]))
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", crc)
    return bytes(data)


def encoded(image: Image.Image, fmt: str, **save_args) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save_args)
    return buffer.getvalue()


def animated_gif() -> bytes:
    frames = [Image.new("P", (20, 10), color) for color in (1, 2, 3)]
    return encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)


def wide_bomb() -> bytes:
    """A real 1x100000 image: tiny on disk, refused by its side length."""
    return encoded(Image.new("L", (1, 100_000)), "PNG")


def chunk_flood(count: int) -> bytes:
    """A valid 64x64 PNG with `count` empty private chunks before its pixels: a few MB that
    Pillow would walk one chunk at a time."""
    png = image_bytes(width=64, height=64)
    kind = b"teXt"
    empty = struct.pack(">I", 0) + kind + struct.pack(">I", zlib.crc32(kind))
    return png[:33] + empty * count + png[33:]


REFUSED = {
    "truncated-png": image_bytes(width=64, height=64)[:300],
    "truncated-jpeg": image_bytes(width=64, height=64, fmt="JPEG")[:400],
    "zero-bytes": b"",
    "decompression-bomb": png_with_size(100_000, 100_000),
    "over-4096": png_with_size(4097, 16),
    "one-by-100000": wide_bomb(),
    "svg": b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>',
    "random-bytes": np.random.default_rng(1).bytes(2048),
    "pdf": b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF",
    "png-chunk-flood": chunk_flood(300_000),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_hostile_images_get_a_clear_400_and_the_server_keeps_serving(make_client, scripted, name):
    client = make_client({"lotus": scripted})
    response = client.post("/depth", json={"image": base64.b64encode(REFUSED[name]).decode()})
    assert response.status_code == 400, response.get_json()
    assert response.get_json()["error"]
    assert scripted.started.empty()  # nothing reached the model
    assert client.post("/depth/sync", json={"image": image_b64()}).status_code == 200


def test_size_is_refused_from_the_header_before_decoding():
    with pytest.raises(InvalidImage, match="4096x4096"):
        open_image(png_with_size(100_000, 100_000))
    with pytest.raises(InvalidImage, match="limit is 4096x4096"):
        open_image(png_with_size(5000, 10))


ACCEPTED = {
    "cmyk-jpeg": (encoded(Image.new("CMYK", (30, 20), (0, 128, 255, 0)), "JPEG"), "RGB"),
    "palette-with-transparency": (encoded(Image.new("P", (30, 20)), "PNG", transparency=0),
                                  "RGBA"),
    "grayscale": (image_bytes(width=30, height=20, mode="L"), "RGB"),
    "rgba": (image_bytes(width=30, height=20, mode="RGBA"), "RGBA"),
    "animated-gif": (animated_gif(), "RGB"),
    "webp": (encoded(Image.new("RGB", (30, 20), "red"), "WEBP"), "RGB"),
}


@pytest.mark.parametrize("name", list(ACCEPTED))
def test_unusual_modes_are_converted_to_rgb_or_rgba(name):
    data, mode = ACCEPTED[name]
    image = open_image(data)
    assert image.mode == mode and image.size[0] > 0


def test_sixteen_bit_png_keeps_its_range_instead_of_clipping_to_white():
    ramp = np.linspace(0, 65535, 64 * 16).reshape(16, 64).astype(np.uint16)
    image = open_image(encoded(Image.fromarray(ramp), "PNG"))
    values = np.asarray(image)[..., 0]
    assert image.mode == "RGB" and values.min() == 0 and values.max() == 255
    assert len(np.unique(values)) > 100


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    data = encoded(Image.new("RGB", (40, 20)), "JPEG", exif=exif.tobytes())
    assert open_image(data).size == (20, 40)


@pytest.mark.parametrize("text", [
    image_b64(), "\n" + image_b64() + "\n", base64.encodebytes(image_bytes()).decode(),
    "data:image/png;base64," + image_b64(), image_b64().rstrip("="),
    base64.urlsafe_b64encode(image_bytes()).decode(),
])
def test_base64_as_users_send_it_decodes(text):
    assert decode_base64(text) == image_bytes()


@pytest.mark.parametrize("text", ["", "   ", "%%%%", "abc$def", "data:image/png;base64,"])
def test_broken_base64_is_refused(text):
    with pytest.raises(InvalidImage):
        decode_base64(text)


def test_a_png_with_ordinary_chunks_still_decodes():
    assert open_image(chunk_flood(100)).size == (64, 64)
    with pytest.raises(InvalidImage, match="more than 20000 chunks"):
        open_image(chunk_flood(20_001))
