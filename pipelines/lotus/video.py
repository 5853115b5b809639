"""Lotus's result for a video job: one zip of the colourised maps as an H.264 mp4 at the
input's frame rate (`<task>.mp4`) and the raw float32 frames as a `.npz` (`<task>.npz`),
downloaded as `<task>_video.zip`. The video coming in (limits, probe, decoding) is
pipelines/video.py's, shared with the queue and the journal.
"""

from __future__ import annotations

import io
import zipfile
from fractions import Fraction
from pathlib import Path

import numpy as np

from ..outputs import atomic_write, colorize_depth

# A video's frames go through the model this many at a time (one forward pass each); the
# job checks for cancellation and reports progress between them.
VIDEO_BATCH_FRAMES = 4


def color_frames(predictions: list[np.ndarray], task: str, disparity: bool) -> list[np.ndarray]:
    """Each prediction as 8-bit RGB: depth as the colour PNG output colours it, normals as
    upstream writes them (infer.py:214: times 255, truncated)."""
    if task == "depth":
        return [colorize_depth(prediction, disparity) for prediction in predictions]
    return [(prediction * 255).astype(np.uint8) for prediction in predictions]


def encode_mp4(frames: list[np.ndarray], fps: float) -> bytes:
    """H.264 in yuv420p (what browsers play), each side padded to even by repeating the
    last row or column (the format's chroma is half size)."""
    import av

    height, width = frames[0].shape[:2]
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = width + width % 2, height + height % 2
        stream.pix_fmt = "yuv420p"
        for rgb in frames:
            rgb = np.pad(rgb, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def write_video_result(path: Path, task: str, predictions: list[np.ndarray], fps: float,
                       disparity: bool) -> Path:
    """The job's zip: `<task>.mp4` (colourised) and `<task>.npz` (`frames`: float32, one
    map per input frame; `fps`)."""
    movie = encode_mp4(color_frames(predictions, task, disparity), fps)
    arrays = io.BytesIO()
    np.savez_compressed(arrays, frames=np.stack(predictions).astype(np.float32),
                        fps=np.float64(fps))

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as archive:
            archive.writestr(f"{task}.mp4", movie)
            archive.writestr(f"{task}.npz", arrays.getvalue())

    return atomic_write(path, write)
