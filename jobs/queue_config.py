"""What the queue (queue_manager.JobQueue) needs of the settings, as one small frozen value:
built from `Settings` by `QueueConfig.from_settings` (the app, the RunPod handler), or with
its defaults (the tests, the benches). The queue holds no Settings: nothing of the keys or
the webhook secret reaches it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from pipelines.video import VideoLimits

if TYPE_CHECKING:
    from settings import Settings

MIN_FREE_BYTES = 64 * 2**20  # below this OUTPUT_DIR counts as full: no job could finish


@dataclass(frozen=True)
class QueueConfig:
    """What the queue needs of the settings (`from_settings`); the defaults are the guide's
    and the tests'."""

    max_queue_size: int = 10
    max_concurrent: int = 1  # in-process slots per pipeline without model workers
    batch_limit: int = 1  # jobs an in-process slot runs as one pass, where the pipeline batches
    result_ttl_seconds: float = 3600.0
    janitor_interval: float = 0.5
    min_free_bytes: int = MIN_FREE_BYTES
    video_limits: VideoLimits = VideoLimits()  # a video kept for a restart is probed again
    # How long a batching worker waits after a lane's head job arrived for jobs that may
    # share its pass: 0 over HTTP (a busy worker's lane fills while it runs); the RunPod
    # worker's jobs arrive together, as concurrent calls (handler.py).
    gather_seconds: float = 0.0

    @classmethod
    def from_settings(cls, settings: "Settings", **overrides: Any) -> "QueueConfig":
        """MAX_QUEUE_SIZE, MAX_CONCURRENT, DEPTH_BATCH, RESULT_TTL_SECONDS, MIN_FREE_DISK_MB
        and the video limits; `overrides` change any field (RunPod's own sizes)."""
        return replace(cls(max_queue_size=settings.max_queue_size,
                           max_concurrent=settings.max_concurrent,
                           batch_limit=settings.depth_batch or 1,
                           result_ttl_seconds=settings.result_ttl_seconds,
                           min_free_bytes=settings.min_free_disk_mb * 2**20,
                           video_limits=settings.image_limits.video), **overrides)

