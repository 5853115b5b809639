"""What accelerator this process has: read once, after the server's worker process forked."""

from __future__ import annotations

import dataclasses
from functools import lru_cache
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from .base import Result


@lru_cache(maxsize=1)
def gpu_info() -> dict:
    """`{"cuda": bool, "gpu": {"name", "vram_gb"} | None}` as /health reports it."""
    try:
        import torch
    except ImportError:
        return {"cuda": False, "gpu": None}
    if not torch.cuda.is_available():
        return {"cuda": False, "gpu": None}
    props = torch.cuda.get_device_properties(0)
    return {"cuda": True,
            "gpu": {"name": props.name, "vram_gb": round(props.total_memory / 1024**3, 1)}}


def with_gpu_peak(run: Callable[[], "Result"]) -> "Result":
    """`run()`, and where this process uses a GPU, the peak memory the job allocated in its
    result's info (`gpu_peak_bytes`: the job status and /metrics show it). A process that
    never touched CUDA (the server's, when a model process runs the models) adds nothing."""
    import torch

    if not torch.cuda.is_initialized():
        return run()
    torch.cuda.reset_peak_memory_stats()
    result = run()
    return dataclasses.replace(result, info={**result.info,
                                             "gpu_peak_bytes": torch.cuda.max_memory_allocated()})
