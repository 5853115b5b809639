"""Render the web page's example photos (web/static/examples/): simple shaded objects on a
table, drawn here with numpy and PIL so the project owns them and may ship them.

    python scripts/make_example_photos.py   # rewrites web/static/examples/*.jpg
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

OUT = Path(__file__).resolve().parent.parent / "web" / "static" / "examples"
WIDTH, HEIGHT = 384, 288
LIGHT = np.array([-0.5, -0.6, 0.62])
LIGHT /= np.linalg.norm(LIGHT)


def backdrop() -> Image.Image:
    """A wall fading into a table top, and the shadow layer drawn onto it later."""
    rows = np.linspace(0, 1, HEIGHT)[:, None, None]
    wall = np.array([226, 222, 214]) * (1 - 0.25 * rows)
    table = np.array([176, 140, 104]) * (0.85 + 0.15 * rows)
    pixels = np.where(rows < 0.58, wall, table) * np.ones((1, WIDTH, 1))
    return Image.fromarray(pixels.astype(np.uint8), "RGB")


def shadow(image: Image.Image, box: tuple[int, int, int, int]) -> Image.Image:
    layer = Image.new("L", image.size, 0)
    ImageDraw.Draw(layer).ellipse(box, fill=110)
    layer = layer.filter(ImageFilter.GaussianBlur(9))
    return Image.composite(Image.new("RGB", image.size, (60, 45, 35)), image, layer)


def lit(normal: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """Lambert plus a little ambient and a highlight, per pixel."""
    diffuse = np.clip(normal @ LIGHT, 0, 1)[..., None]
    half = LIGHT + np.array([0, 0, 1.0])
    specular = np.clip(normal @ (half / np.linalg.norm(half)), 0, 1)[..., None] ** 40
    return np.clip(colour * (0.25 + 0.75 * diffuse) + 255 * 0.5 * specular, 0, 255)


def paste(image: Image.Image, rgb: np.ndarray, inside: np.ndarray) -> Image.Image:
    pixels = np.asarray(image).copy()
    pixels[inside] = rgb[inside]
    return Image.fromarray(pixels.astype(np.uint8), "RGB")


def ball() -> Image.Image:
    cx, cy, r = 190, 150, 78
    image = shadow(backdrop(), (cx - 85, cy + 55, cx + 95, cy + 95))
    y, x = np.mgrid[:HEIGHT, :WIDTH]
    nx, ny = (x - cx) / r, (y - cy) / r
    inside = nx ** 2 + ny ** 2 < 1
    normal = np.dstack([nx, ny, np.sqrt(np.clip(1 - nx ** 2 - ny ** 2, 0, 1))])
    return paste(image, lit(normal, np.array([200, 40, 40])), inside)


def vase() -> Image.Image:
    """A solid of revolution: its radius varies with height."""
    cx, top, bottom = 192, 40, 240
    image = shadow(backdrop(), (cx - 80, bottom - 20, cx + 90, bottom + 16))
    y, x = np.mgrid[:HEIGHT, :WIDTH]
    t = np.clip((y - top) / (bottom - top), 0, 1)
    radius = 28 + 46 * np.sin(np.pi * (0.15 + 0.8 * t)) ** 2
    nx = (x - cx) / radius
    inside = (np.abs(nx) < 1) & (y > top) & (y < bottom)
    normal = np.dstack([nx, np.zeros_like(nx) - 0.2, np.sqrt(np.clip(1 - nx ** 2, 0, 1))])
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    return paste(image, lit(normal, np.array([40, 140, 90])), inside)


def box() -> Image.Image:
    """A box seen from above one corner: three faces, three shades."""
    image = shadow(backdrop(), (90, 200, 320, 250))
    draw = ImageDraw.Draw(image)
    top = [(192, 70), (292, 110), (192, 150), (92, 110)]
    left = [(92, 110), (192, 150), (192, 240), (92, 200)]
    right = [(192, 150), (292, 110), (292, 200), (192, 240)]
    for face, colour in ((top, (120, 160, 235)), (left, (50, 90, 190)), (right, (35, 60, 140))):
        draw.polygon(face, fill=colour)
    return image


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, render in (("ball", ball), ("vase", vase), ("box", box)):
        render().save(OUT / f"{name}.jpg", quality=85, optimize=True)
        print(OUT / f"{name}.jpg", (OUT / f"{name}.jpg").stat().st_size, "bytes")


if __name__ == "__main__":
    main()
