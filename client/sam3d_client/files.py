"""The files a client sends and writes: what each output is saved as, a photo read with a
plain reason when it cannot be, an output path refused before any work."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Union

# The suffix of the file the server sends for each output (its download name):
# /generate's output_format, /depth's and /normal's output.
GENERATE_SUFFIXES = {"glb": ".glb", "ply": ".ply", "obj": ".zip", "stl": ".stl",
                     "usdz": ".usdz"}
DEPTH_SUFFIXES = {"png": ".png", "png16": ".png", "color": ".png", "npy": ".npy",
                  "glb": ".glb", "ply": ".ply"}
NORMAL_SUFFIXES = {"png": ".png", "png16": ".png", "npy": ".npy"}
# The videos /depth and /normal take; their result is a zip (<task>.mp4 and <task>.npz).
VIDEO_SUFFIXES = (".mp4", ".mov", ".webm")

ImageSource = Union[str, os.PathLike, bytes]


class OutputPathError(ValueError):
    """The file to write cannot be written there, or would get the wrong suffix."""


class InputFileError(OSError):
    """A file to send cannot be read; `str()` says which and why, in a few words."""


def encode_file(source: ImageSource) -> str:
    """Base64 of a file (a path) or of bytes."""
    return base64.b64encode(source if isinstance(source, bytes) else read_file(source)).decode()


def read_file(path: str | os.PathLike) -> bytes:
    """A file's bytes; InputFileError saying `photo.jpg: no such file`, not `[Errno 2] ...`."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise InputFileError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputFileError(f"{path} is a folder, not a file") from None
    except PermissionError:
        raise InputFileError(f"{path}: not allowed to read it (permission denied)") from None
    except OSError as exc:
        raise InputFileError(f"{path}: cannot be read ({exc.strerror or exc})") from None


def check_output_path(path: str | os.PathLike, suffix: str | None = None,
                      what: str = "the result") -> Path:
    """Refuse, before any work, a file that could not be written (no such folder, not
    writable, a folder) or, with `suffix`, that would carry another format's suffix."""
    path = Path(path)
    folder = path.parent
    if path.is_dir():
        raise OutputPathError(f"{path} is a folder: name the file, e.g. "
                              f"{path / ('result' + (suffix or ''))}")
    if not folder.is_dir():
        raise OutputPathError(f"{path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise OutputPathError(f"{path}: folder {folder} is not writable")
    if suffix is not None and path.suffix.lower() != suffix:
        raise OutputPathError(f"{path}: {what} is a {suffix} file; name it "
                              f"{path.with_name(path.stem + suffix)}")
    return path


def image_fields(image: ImageSource | None, image_url: str | None,
                 video: ImageSource | None = None, video_url: str | None = None) -> dict:
    """The job's source, as the server's fields: files in base64, URLs as they are."""
    given = {name: value for name, value in (("image", image), ("image_url", image_url),
                                             ("video", video), ("video_url", video_url))
             if value is not None}
    if len(given) != 1:
        raise ValueError("give exactly one source: a file (a path or bytes) or a URL, not "
                         f"{' and '.join(given) or 'none'}")
    (name, value), = given.items()
    return {name: value if name.endswith("_url") else encode_file(value)}
