"""Which pixels are the object: a client's own mask, the image's alpha, rembg, or a centre box.

SAM 3D Objects reads its mask from the alpha channel of an RGBA uint8 image, 255 where the
object is (notebook/inference.py:94-99, `merge_mask_to_rgba`). Every source here ends there.
"""

from __future__ import annotations

import base64
import io
import logging
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from ..errors import InvalidInput
from ..images import ImageLimits, InvalidImage, image_data, open_image
from ..fetch import fetch_url

log = logging.getLogger(__name__)

# Below this alpha a pixel of the image's own alpha, or of rembg's soft mask, is background.
# Upstream crops to every non-zero mask pixel (img_and_mask_transforms.py:357), so a soft
# mask's faint haze would make the whole photo the object.
MASK_THRESHOLD = 128
MaskSource = Literal["alpha", "rembg", "center"]


def read_client_mask(source: str | bytes, image_size: tuple[int, int], where: str, *,
                     is_url: bool, limits: ImageLimits) -> np.ndarray:
    """A mask a client sent (base64 or URL) as a boolean array the size of the image.

    Non-zero pixels are the object, as upstream's `load_mask` reads a mask file
    (notebook/inference.py:351-356). Upstream reads the last channel of a colour mask; here
    that is the alpha channel only when the mask has transparency, else any non-zero colour,
    so an opaque black-and-white RGBA mask is not all object. Every fault is a 400 naming
    `where`.
    """
    try:
        data = fetch_url(source, max_bytes=limits.url_max_bytes,
                         timeout=limits.url_timeout_seconds,
                         allow_private=limits.allow_private_urls) if is_url else image_data(source)
        mask = open_image(data, limits.max_side)
    except InvalidInput as exc:
        raise InvalidImage(f"{where}: {exc}") from None
    if mask.size != image_size:
        raise InvalidImage(f"{where} is {mask.width}x{mask.height} pixels; it must be the "
                           f"image's size, {image_size[0]}x{image_size[1]}")
    alpha = np.asarray(mask.getchannel("A")) if mask.mode == "RGBA" else None
    if alpha is not None and alpha.min() < 255:
        binary = alpha > 0
    else:
        binary = np.asarray(mask.convert("RGB")).any(axis=-1)
    if not binary.any():
        raise InvalidImage(f"{where} is empty: no pixel is non-zero, so there is no object")
    return binary


def encode_mask(mask: np.ndarray) -> str:
    """A boolean mask as a 1-bit PNG in base64: small enough to travel in a job's options."""
    buffer = io.BytesIO()
    Image.fromarray(mask.astype(bool)).save(buffer, format="PNG", optimize=True)
    return base64.b64encode(buffer.getvalue()).decode()


def decode_mask(text: str) -> np.ndarray:
    """`encode_mask`'s inverse: 0/255 uint8, the alpha SAM 3D Objects reads."""
    mask = Image.open(io.BytesIO(base64.b64decode(text)), formats=["PNG"])
    return np.where(np.asarray(mask.convert("L")) > 0, 255, 0).astype(np.uint8)


def with_mask(image: Image.Image, mask: np.ndarray) -> np.ndarray:
    """RGBA uint8, the mask in alpha (upstream's `merge_mask_to_rgba`)."""
    return np.dstack([np.asarray(image.convert("RGB")), mask])


class Masker:
    """The object when the client sent no mask: the image's own alpha, else rembg, else a
    centre box."""

    def __init__(self, session: Any = None):
        self.session = session

    @classmethod
    def create(cls) -> "Masker":
        """One rembg session for the server's life, from `U2NET_HOME/u2net.onnx` (baked into
        the image; rembg's own default folder otherwise): rembg is never let download."""
        model_path = Path(os.environ.get("U2NET_HOME", Path.home() / ".u2net")) / "u2net.onnx"
        if not model_path.is_file():
            log.warning("rembg model %s not found", model_path)
            return cls(None)
        try:
            import rembg

            return cls(rembg.new_session("u2net_custom", model_path=str(model_path)))
        except Exception as exc:  # not installed, or a broken model file
            log.warning("rembg unavailable (%s)", exc)
            return cls(None)

    def __call__(self, image: Image.Image) -> np.ndarray:
        """RGBA uint8 with a 0/255 mask in alpha, as SAM 3D Objects reads it."""
        return with_mask(image, self.mask(image)[0])

    def mask(self, image: Image.Image) -> tuple[np.ndarray, MaskSource]:
        """The 0/255 mask a 3D job gives the model, and where it came from (what
        `POST /segment` shows before the job is sent)."""
        if image.mode == "RGBA":
            alpha = np.asarray(image.getchannel("A"))
            if alpha.min() < 255 and alpha.max() > 0:
                return binarise(alpha, "the image's alpha channel"), "alpha"
        if self.session is not None:
            import rembg

            mask = rembg.remove(image.convert("RGB"), session=self.session, only_mask=True)
            return binarise(np.asarray(mask.convert("L")), "background removal"), "rembg"
        log.info("Using center mask (rembg not available)")
        return center_mask(image.height, image.width), "center"


def binarise(mask: np.ndarray, source: str) -> np.ndarray:
    """0/255 at MASK_THRESHOLD; an empty mask is the client's problem, not the model's."""
    binary = np.where(mask >= MASK_THRESHOLD, 255, 0).astype(np.uint8)
    if not binary.any():
        raise InvalidInput(f"no object found: {source} leaves no pixel at least half opaque; "
                           "send a PNG whose alpha channel marks the object, or a 'mask'")
    return binary


def center_mask(height: int, width: int, fraction: float = 0.8) -> np.ndarray:
    mask = np.zeros((height, width), dtype=np.uint8)
    dy, dx = round(height * (1 - fraction) / 2), round(width * (1 - fraction) / 2)
    mask[dy:height - dy or height, dx:width - dx or width] = 255
    return mask
