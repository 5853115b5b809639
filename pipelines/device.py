"""What accelerator this process has: read once, after the server's worker process forked."""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


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


def best_device() -> tuple[str, "torch.dtype"]:
    """fp16 on CUDA, fp32 on the CPU (CPU kernels for fp16 are slow or missing)."""
    import torch

    if torch.cuda.is_available():
        return "cuda", torch.float16
    return "cpu", torch.float32
