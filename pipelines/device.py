"""What accelerator this process has: read once, after gunicorn forked its worker process."""

from __future__ import annotations

import dataclasses
from functools import lru_cache
from typing import Callable

# DEPTH_BATCH's default: images a depth model (Lotus-D, Depth Anything V2) runs in one forward
# pass, per device kind (the table's `batch_limit` of both). On a CPU batching gained little
# in bench/depth.py and every job of a batch waits for the whole pass.
DEFAULT_DEPTH_BATCH = {"cuda": 4, "cpu": 1}


def depth_batch(settings, device) -> int:
    """A depth model's batch limit on `device` (a workers.devices.Device): DEPTH_BATCH, else
    the default for its kind."""
    return settings.depth_batch or DEFAULT_DEPTH_BATCH[device.kind]


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


# What a process's CUDA context takes on the card beside what torch's allocator reserves
# (cuBLAS/cuDNN handles, kernels loaded lazily): an estimate (CUDA 12+ lazy loading keeps it
# near 0.5 GiB for a torch process); torch cannot read it per process.
CUDA_CONTEXT_GIB = 0.5


def footprint(pipeline: str, stand_ins: dict[str, float]) -> dict:
    """What this model process holds on its GPU, read just after its model loaded:
    `{"gpu_footprint_gib": GiB, "gpu_footprint_source": "measured" | "stand-in"}`, or {}
    where it holds nothing on a GPU.

    Measured as torch's reserved memory (the caching allocator keeps what it reserved, so
    this is what no other process can have) plus CUDA_CONTEXT_GIB. A process on a CPU
    device reports STAND_IN_GPU_FOOTPRINT_GIB's figure for its pipeline instead (tests)."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        held = torch.cuda.memory_reserved() / 2**30 + CUDA_CONTEXT_GIB
        return {"gpu_footprint_gib": round(held, 2), "gpu_footprint_source": "measured"}
    if pipeline in stand_ins:
        return {"gpu_footprint_gib": stand_ins[pipeline], "gpu_footprint_source": "stand-in"}
    return {}
