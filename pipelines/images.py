"""Image input shared by every entry point: base64 and bytes to a safe, upright PIL image.

Hostile input is stopped as early as possible: the size is read from the header and
refused before any pixel is decoded, only a few formats are opened at all, and Pillow's
decompression-bomb warning is an error.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings
from dataclasses import dataclass
from typing import Annotated, Any, Literal, NamedTuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, model_validator

from .errors import InvalidInput
from .fetch import fetch_url
from .video import VideoLimits

ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")
# Pillow handles PNG chunks one by one in Python: millions of empty ones cost seconds of
# CPU for a few MB. Encoders write IDAT chunks of 8 KiB or more, so a 100 MB PNG has about
# 12,000 chunks; more than this is refused before decoding.
MAX_PNG_CHUNKS = 20_000
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_DATA_URL = re.compile(r"^data:[\w/+.-]*(;[\w=.-]+)*;base64,", re.IGNORECASE)
_WHITESPACE = re.compile(r"\s+")


# An image field: base64 text in a JSON body, the file's own bytes in a multipart upload
# (`curl -F image=@photo.jpg`); the JSON document describes the text.
ImageData = Annotated[str | bytes, WithJsonSchema({"type": "string"})]


class InvalidImage(InvalidInput):
    """The client sent something that is not a usable image; the message says why."""


@dataclass(frozen=True)
class ImageLimits:
    """What one request may send; built from the settings (`Settings.image_limits`)."""

    max_side: int
    url_max_bytes: int
    url_timeout_seconds: float
    allow_private_urls: bool
    video: VideoLimits = VideoLimits()


class JobInputs(NamedTuple):
    """What a job is made of: its options without the image, the image decoded, and the
    image's bytes as they came (the journal keeps those for a restart: never re-encoded)."""

    options: Any
    image: Image.Image
    source: bytes | None = None


class ImageSource(BaseModel):
    """The image fields every request shares: one of base64 `image` (or the serverless
    plan's `image_base64`) and `image_url`."""

    model_config = ConfigDict(extra="forbid", strict=True)

    image: ImageData | None = Field(None, description="Base64-encoded image; line breaks and "
                                    "a data:image/...;base64, prefix are accepted (a file "
                                    "in a multipart/form-data upload)")
    image_base64: str | None = Field(None, description="Same as image (the serverless plan's name)")
    image_url: str | None = Field(None, description="http(s) URL of the image; private and "
                                  "loopback addresses are refused")

    @model_validator(mode="after")
    def _one_source(self):
        sources = [self.image, self.image_base64, self.image_url]
        if sum(source is not None for source in sources) != 1:
            raise ValueError("send exactly one of 'image' (base64 in JSON, a file in a form "
                             "upload) or 'image_url'")
        return self

    def without_image(self):
        """The options alone: the image is decoded once and kept beside them."""
        return self.model_copy(update={"image": None, "image_base64": None, "image_url": None})

    def load(self, limits: "ImageLimits") -> JobInputs:
        """What a job keeps: the options without the image, and the image decoded (or
        downloaded) within `limits`. Requests with more inputs (masks) extend it."""
        data = read_image_bytes(self, limits)
        return JobInputs(self.without_image(), open_image(data, limits.max_side), data)


class ImageInput(ImageSource):
    """A job's image and the webhook told of its progress (a job one polls or is told of;
    an answer given at once, `POST /segment`, takes an `ImageSource` alone)."""

    webhook: str | None = Field(None, max_length=2048, description="http(s) URL the server "
                                "POSTs the job's status to, signed (Standard Webhooks); "
                                "https advised. HTTP server only")
    webhook_events: list[Literal["start", "completed", "failed", "cancelled"]] | None = Field(
        None, min_length=1, description="When to call `webhook` (default: completed, failed, "
        "cancelled)")


def read_image_bytes(source: ImageSource, limits: ImageLimits) -> bytes:
    """The request's image file: base64-decoded, or downloaded within `limits`."""
    if source.image_url is None:
        return image_data(source.image if source.image is not None else source.image_base64)
    return fetch_url(source.image_url, max_bytes=limits.url_max_bytes,
                     timeout=limits.url_timeout_seconds, allow_private=limits.allow_private_urls)


def image_data(value: str | bytes) -> bytes:
    """An image field's file: an upload's bytes as they are, JSON's base64 decoded."""
    if isinstance(value, bytes):
        if not value:
            raise InvalidImage("image is empty")
        return value
    return decode_base64(value)


def decode_base64(text: str) -> bytes:
    """Base64 as users send it: with line breaks (Git Bash, PowerShell), a `data:` URL
    prefix, URL-safe letters or missing padding."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidImage("image is empty")
    text = _WHITESPACE.sub("", _DATA_URL.sub("", text.strip(), count=1))
    text = text.replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidImage("image is not valid base64") from None
    if not data:
        raise InvalidImage("image is empty")
    return data


def open_image(data: bytes, max_side: int = 4096) -> Image.Image:
    """Decode an image, refusing oversize ones from the header alone.

    Returns RGB, or RGBA when the image carries transparency (SAM 3D reads its mask
    from alpha). EXIF orientation is applied; animations keep their first frame.
    """
    max_pixels = max_side * max_side
    if data.startswith(_PNG_SIGNATURE):
        _check_png_chunk_count(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
            width, height = image.size
            if width < 1 or height < 1:
                raise InvalidImage("image has no pixels")
            if width > max_side or height > max_side:
                raise InvalidImage(f"image is {width}x{height} pixels; "
                                   f"the limit is {max_side}x{max_side}")
            image.seek(0)
            image.load()
    except InvalidImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InvalidImage(f"image exceeds {max_side}x{max_side} pixels") from None
    except UnidentifiedImageError:
        raise InvalidImage(
            "not a supported image (PNG, JPEG, WebP, BMP, GIF or TIFF expected)") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise InvalidImage(f"image could not be decoded: {exc}") from None
    if image.width * image.height > max_pixels:  # defensive: a header that lied
        raise InvalidImage(f"image exceeds {max_side}x{max_side} pixels")
    return _to_rgb_or_rgba(ImageOps.exif_transpose(image))


def _check_png_chunk_count(data: bytes) -> None:
    """Walk the chunk headers (8 bytes each, data skipped) up to MAX_PNG_CHUNKS."""
    offset, chunks = len(_PNG_SIGNATURE), 0
    while offset + 8 <= len(data):
        chunks += 1
        if chunks > MAX_PNG_CHUNKS:
            raise InvalidImage(f"PNG has more than {MAX_PNG_CHUNKS} chunks")
        length = int.from_bytes(data[offset:offset + 4], "big")
        if data[offset + 4:offset + 8] == b"IEND":
            return
        offset += 12 + length  # length, type, data, CRC


def _to_rgb_or_rgba(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        image = _scale_to_8_bit(image)
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return image.convert("RGBA")
    return image.convert("RGB")


def _scale_to_8_bit(image: Image.Image) -> Image.Image:
    """16-bit and float grayscale: stretch to 0-255 (Pillow's convert would clip)."""
    values = np.asarray(image, dtype=np.float64)
    top = 65535.0 if image.mode.startswith("I;16") else max(float(values.max()), 1.0)
    if image.mode == "F":
        low, high = float(values.min()), float(values.max())
        values, top = values - low, max(high - low, 1e-12)
    return Image.fromarray(np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
