"""What accelerator this process has: read once, after the server's worker process forked."""

from __future__ import annotations

import dataclasses
from functools import lru_cache
from typing import Callable


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


def with_gpu_peak(run: Callable[[], list]) -> list:
    """`run()` (a list of job outcomes), and where this process uses a GPU, the peak memory
    the jobs allocated in each result's info (`gpu_peak_bytes`: the job status and /metrics
    show it; a batch shares one figure). A process that never touched CUDA adds nothing."""
    import torch

    if not torch.cuda.is_initialized():
        return run()
    torch.cuda.reset_peak_memory_stats()
    outcomes = run()
    peak = torch.cuda.max_memory_allocated()
    return [dataclasses.replace(outcome, info={**outcome.info, "gpu_peak_bytes": peak})
            if hasattr(outcome, "info") else outcome for outcome in outcomes]
