"""What accelerator this process has: read once, after the server's worker process forked."""

from __future__ import annotations

from functools import lru_cache


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
