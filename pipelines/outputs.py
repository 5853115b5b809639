"""Result files: written atomically, so a download never sees half a file.

Depth and normal encodings live here too: every one is computed from the raw float
prediction.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Run `write(temporary_path)` beside `path`, then rename the file into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _normalized(depth: np.ndarray) -> np.ndarray:
    low, high = float(depth.min()), float(depth.max())
    return (depth - low) / (high - low) if high > low else np.zeros_like(depth)


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def depth_png8(depth: np.ndarray) -> bytes:
    """The serverless plan's grayscale PNG: min..max stretched to 0..255."""
    return _png_bytes(Image.fromarray(np.round(_normalized(depth) * 255).astype(np.uint8)))


def depth_png16(depth: np.ndarray) -> bytes:
    """min..max stretched to 0..65535: 256 times the precision of the 8-bit PNG."""
    values = np.round(_normalized(depth) * 65535).astype(np.uint16)
    return _png_bytes(Image.fromarray(values))


def depth_npy(depth: np.ndarray) -> bytes:
    """The raw float32 prediction (depth or normals), as upstream saves it (infer.py:217)."""
    buffer = io.BytesIO()
    np.save(buffer, depth.astype(np.float32), allow_pickle=False)
    return buffer.getvalue()


def colorize_depth(depth: np.ndarray, disparity: bool = True) -> np.ndarray:
    """Matplotlib's Spectral, near in red, as the Lotus demo shows it: on 1 - disparity, or
    on depth itself (utils/image_utils.py:48-57, reverse_color=--disparity, infer.py:211);
    height x width x 3 uint8."""
    from matplotlib import colormaps

    normalized = _normalized(depth)
    rgba = colormaps["Spectral"](1.0 - normalized if disparity else normalized, bytes=True)
    return np.ascontiguousarray(rgba[..., :3])


def depth_color(depth: np.ndarray, disparity: bool = True) -> bytes:
    """`colorize_depth` as a PNG."""
    return _png_bytes(Image.fromarray(colorize_depth(depth, disparity)))


def normal_png8(normals: np.ndarray) -> bytes:
    """Upstream's file (infer.py:214): the height x width x 3 prediction in [0, 1] times 255,
    truncated to 8 bits, as RGB."""
    return _png_bytes(Image.fromarray((normals * 255).astype(np.uint8)))


def normal_png16(normals: np.ndarray) -> bytes:
    """The prediction times 65535, rounded, as a 16-bit RGB PNG (Pillow writes 16 bits for
    one channel only; pypng writes any PNG)."""
    import png

    height, width, _ = normals.shape
    values = np.round(np.clip(normals, 0, 1) * 65535).astype(np.uint16)
    buffer = io.BytesIO()
    png.Writer(width, height, greyscale=False, bitdepth=16).write(
        buffer, values.reshape(height, width * 3))
    return buffer.getvalue()


# output name -> (encoder, suffix, media type, download name)
DEPTH_FORMATS: dict[str, tuple[Callable[[np.ndarray], bytes], str, str, str]] = {
    "png": (depth_png8, ".png", "image/png", "depth.png"),
    "png16": (depth_png16, ".png", "image/png", "depth16.png"),
    "npy": (depth_npy, ".npy", "application/octet-stream", "depth.npy"),
    "color": (depth_color, ".png", "image/png", "depth_color.png"),
}
NORMAL_FORMATS: dict[str, tuple[Callable[[np.ndarray], bytes], str, str, str]] = {
    "png": (normal_png8, ".png", "image/png", "normal.png"),
    "png16": (normal_png16, ".png", "image/png", "normal16.png"),
    "npy": (depth_npy, ".npy", "application/octet-stream", "normal.npy"),
}
