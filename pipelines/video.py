"""A video as a job's input (`POST /depth`, `/normal`), with PyAV (FFmpeg's libraries
in-process: no subprocess, no temporary file): its limits (VIDEO_MAX_*, in Settings), the
probe at submission and again at a restart (the journal), and the decoded frames. Lotus's
result for a video (an mp4 and an npz in a zip) is written by pipelines/lotus/video.py.

A video is refused from its container's metadata (format, duration, frame count, frame
size) before one frame is decoded (a webm recorded live has no length in its header: its
packets are counted, undecoded; one with fewer bytes than it declares is cut short, as is
an mp4 or mov with fewer whole samples than its index declares); decoding then stops at the
frame limit whatever the metadata said, and fails if the frames fall short of it.

Memory: FFmpeg decodes a frame while it probes (avformat_find_stream_info) to learn what
the container may not say, so a 64x48 container can hold a 12000x12000 PNG that costs
hundreds of MiB before the size check. Every codec FFmpeg opens here, for the probe and
for decoding, gets `max_pixels` (AVCodecContext.max_pixels, checked by
av_image_check_size2 as a decoder sets its frame size, before it allocates the frame),
VIDEO_MAX_SIDE squared: a larger frame is an error inside FFmpeg, never an allocation. At
most PROBE_SLOTS probes run at once, so the HTTP process's memory for probing is bounded
across concurrent submissions too. (Chosen over a probe in a child process with
RLIMIT_AS: the server's process has gigabytes of address space mapped once torch is
imported, so a fork could not be given a meaningful limit; a fresh interpreter per upload
would cost far more than the probe.)

Rotation: a phone records portrait video as landscape pixels with a display matrix
(ISO BMFF tkhd matrix); FFmpeg attaches it to every decoded frame (AV_FRAME_DATA_
DISPLAYMATRIX, PyAV's VideoFrame.rotation), and decode_frames turns the frame upright as
pipelines/images applies a photo's EXIF orientation.
"""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterator

from PIL import Image

from .errors import InvalidInput

# The container is told from its first bytes and FFmpeg opens it with that demuxer alone:
# left to probe, FFmpeg would also open playlists (hls, concat) that read other files and URLs.
# ISO BMFF (mp4, mov) has a box type at bytes 4-8; Matroska (webm) an EBML header.
MP4_BOXES = (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip")
EBML_MAGIC = b"\x1a\x45\xdf\xa3"
MATROSKA_SEGMENT = b"\x18\x53\x80\x67"  # the element after the EBML header (RFC 9559)
# Probes at once in this process: each holds at most a few frames of VIDEO_MAX_SIDE squared
# pixels (max_pixels), and takes milliseconds; more submissions wait their turn.
PROBE_SLOTS = 2
_probes = threading.BoundedSemaphore(PROBE_SLOTS)
# VideoFrame.rotation (counterclockwise degrees) -> PIL's transpose that turns it upright.
_UPRIGHT = {90: Image.Transpose.ROTATE_90, -90: Image.Transpose.ROTATE_270,
            180: Image.Transpose.ROTATE_180, -180: Image.Transpose.ROTATE_180}


@dataclass(frozen=True)
class VideoLimits:
    """What one video may be (VIDEO_MAX_SECONDS, VIDEO_MAX_FRAMES, VIDEO_MAX_SIDE,
    VIDEO_MAX_BYTES)."""

    max_seconds: float = 10.0
    max_frames: int = 120
    max_side: int = 1280
    max_bytes: int = 50 * 1024 * 1024


class InvalidVideo(InvalidInput):
    """The client sent something that is not a usable video; the message says why."""


@dataclass(frozen=True, eq=False)
class Video:
    """A probed video, not yet decoded: its file and what its container says. Stands where
    a job's image stands (`size` is the frame size); each job's is its own batch."""

    data: bytes
    width: int
    height: int
    frames: int
    fps: float
    seconds: float
    max_frames: int  # VIDEO_MAX_FRAMES when it was probed: decoding stops there
    max_side: int = VideoLimits.max_side  # VIDEO_MAX_SIDE then: no frame decodes larger

    @property
    def size(self) -> tuple[int, int]:
        """The frame size as stored (coded); a rotated video's frames come out turned."""
        return self.width, self.height


def probe_video(data: bytes, limits: VideoLimits) -> Video:
    """The video's metadata, checked against `limits`; nothing is decoded."""
    import av

    if len(data) > limits.max_bytes:
        raise InvalidVideo(f"video is {len(data)} bytes; the limit is {limits.max_bytes}")
    declared = _matroska_length(data)
    if declared is not None and declared > len(data):
        raise InvalidVideo(f"video is cut short: {len(data)} of the {declared} bytes its "
                           "container declares")
    with _probes:
        return _probe(data, limits)


def _probe(data: bytes, limits: VideoLimits) -> Video:
    import av

    try:
        with _open(data, limits.max_side) as container:
            if not container.streams.video:
                raise InvalidVideo("video has no video stream")
            stream = container.streams.video[0]
            if stream.codec_context is None:
                raise InvalidVideo("video's codec is not one this server decodes")
            width, height = stream.codec_context.width, stream.codec_context.height
            rate = stream.average_rate or stream.guessed_rate or Fraction(0)
            if stream.duration is not None and stream.time_base:
                seconds = float(stream.duration * stream.time_base)
            else:  # webm keeps the duration on the container, in microseconds
                seconds = (container.duration or 0) / 1e6
            frames = stream.frames or round(seconds * float(rate))
            if stream.frames and width and height and stream.frames <= limits.max_frames:
                _check_samples(container, stream)  # mp4 and mov: every sample it indexes
            elif not frames:  # a live or browser-recorded webm: no duration in its header
                frames, seconds = _demuxed_length(container, stream, limits.max_frames)
    except InvalidVideo:
        raise
    except (av.FFmpegError, ValueError, OSError, EOFError):
        raise InvalidVideo("not a supported video (mp4, mov or webm expected)") from None
    if width < 1 or height < 1:  # also FFmpeg's answer to a frame past max_pixels
        raise InvalidVideo("video has no frame size this server can read (frames are at "
                           f"most {limits.max_side}x{limits.max_side} pixels)")
    if frames < 1 or rate <= 0:
        raise InvalidVideo("video has no frames its container describes")
    if width > limits.max_side or height > limits.max_side:
        raise InvalidVideo(f"video is {width}x{height} pixels; the limit is "
                           f"{limits.max_side}x{limits.max_side}")
    if seconds > limits.max_seconds:
        raise InvalidVideo(f"video is {seconds:.1f} s long; the limit is {limits.max_seconds:g} s")
    if frames > limits.max_frames:
        raise InvalidVideo(f"video has {frames} frames; the limit is {limits.max_frames}")
    return Video(data, width, height, frames, float(rate), seconds, limits.max_frames,
                 limits.max_side)


def _check_samples(container, stream) -> None:
    """Refuse an mp4 or mov whose data ends before the samples its index (stsz) declares:
    cut at a sample boundary, FFmpeg simply stops demuxing (and decodes the frames before
    the cut without a word); cut inside one, the last packet comes back short and flagged
    corrupt. Packets are read, not decoded."""
    whole = 0
    for packet in container.demux(stream):
        if packet.size == 0:
            continue
        if packet.is_corrupt:
            break
        whole += 1
    if whole < stream.frames:
        raise InvalidVideo(f"video is cut short: {whole} of the {stream.frames} frames its "
                           "container declares")


def _demuxed_length(container, stream, max_frames: int) -> tuple[int, float]:
    """Frames and seconds from the packets themselves, read without decoding one and no
    further than `max_frames`: what a webm muxed as it is recorded (MediaRecorder, FFmpeg's
    `live` option) says nowhere else, its header written before its length was known."""
    frames, end = 0, 0
    for packet in container.demux(stream):
        if packet.size == 0:  # the demuxer's closing empty packet
            continue
        frames += 1
        if frames > max_frames:
            raise InvalidVideo(f"video has more than {max_frames} frames; the limit is "
                               f"{max_frames}")
        if packet.pts is not None:
            end = max(end, packet.pts + (packet.duration or 0))
    return frames, float(end * stream.time_base) if stream.time_base else 0.0


def _matroska_length(data: bytes) -> int | None:
    """The bytes a webm says it holds: its Segment's end. None where that is unknown (a live
    recording leaves the size open) or it is not a webm. FFmpeg reads a webm cut short up to
    the cut without a word, so a truncated upload would pass for a shorter video."""
    if not data.startswith(EBML_MAGIC):
        return None
    header_size, offset = _vint(data, len(EBML_MAGIC))
    if header_size is None:
        return None
    offset += header_size
    if data[offset:offset + len(MATROSKA_SEGMENT)] != MATROSKA_SEGMENT:
        return None
    segment_size, offset = _vint(data, offset + len(MATROSKA_SEGMENT))
    return None if segment_size is None else offset + segment_size


def _vint(data: bytes, offset: int) -> tuple[int | None, int]:
    """An EBML element's data size at `offset` and the offset past it (RFC 8794, sections 4
    and 6): the first byte's leading zeros tell its length; every value bit set means
    unknown (None), as does a size that is not one."""
    first = data[offset] if offset < len(data) else 0
    length = 9 - first.bit_length()
    if length > 8 or offset + length > len(data):
        return None, offset
    mask = (1 << (7 * length)) - 1
    value = int.from_bytes(data[offset:offset + length], "big") & mask
    return (None if value == mask else value), offset + length


def demuxer_of(data: bytes) -> str | None:
    """FFmpeg's demuxer for a file that starts as an mp4, mov or webm does, else None."""
    if data[4:8] in MP4_BOXES:
        return "mp4"
    if data.startswith(EBML_MAGIC):
        return "matroska"
    return None


def _open(data: bytes, max_side: int):
    """The container, every codec FFmpeg opens while probing it capped at `max_side`
    squared pixels (see the module's docstring)."""
    import av

    demuxer = demuxer_of(data)
    if demuxer is None:
        raise InvalidVideo("not a supported video (mp4, mov or webm expected)")
    # `options` reach avformat_find_stream_info's decoders (PyAV container/input.pyx);
    # avformat_open_input leaves the codec option unused.
    return av.open(io.BytesIO(data), mode="r", format=demuxer,
                   options={"max_pixels": str(max_side * max_side)})


def decode_frames(video: Video) -> Iterator[Image.Image]:
    """The frames as RGB images, upright (the display matrix applied), in order; more than
    the limit is refused (a container whose metadata undercounted), as are fewer than the
    container declared (a stream that ends or breaks early). RGB deliberately: upstream's demo reads frames with OpenCV
    (BGR) and never converts them (EnVision-Research/Lotus app.py:139-149,76); a frame here
    is what its infer.py feeds the model for a photo (infer.py:183)."""
    import av

    try:
        with _open(video.data, video.max_side) as container:
            stream = container.streams.video[0]
            # the decoder's own context is opened afresh: the cap is given again
            stream.codec_context.options = {"max_pixels": str(video.max_side ** 2)}
            decoded = 0
            for frame in container.decode(stream):
                if decoded >= video.max_frames:
                    raise InvalidVideo(f"video has more than {video.max_frames} frames")
                if (frame.width, frame.height) != video.size:
                    raise InvalidVideo("video changes its frame size mid-stream")
                decoded += 1
                image = frame.to_image()
                turn = _UPRIGHT.get(frame.rotation)
                yield image.transpose(turn) if turn is not None else image
            if demuxer_of(video.data) == "mp4" and decoded < min(video.frames, video.max_frames):
                raise InvalidVideo(f"video ended after {decoded} of the {video.frames} "
                                   "frames its container declares")
    except av.FFmpegError as exc:  # a damaged stream is the client's, not a server error
        raise InvalidVideo(f"video could not be decoded: {exc.strerror}") from None
