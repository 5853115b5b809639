"""The devices model workers run on, and pinning a worker process to its one device.

The HTTP process never initialises CUDA: a GPU's name and memory come from a short-lived
probe process, and each model process hides every other GPU from itself through
`CUDA_VISIBLE_DEVICES` before it imports torch, so `cuda:0` inside it is its own GPU. A CPU
"device" takes the same path with every GPU hidden, which is how the tests run several
workers on one machine.
"""

from __future__ import annotations

import multiprocessing
import os
from dataclasses import dataclass
from pathlib import Path

NVIDIA_DRIVER = Path("/proc/driver/nvidia/gpus")  # absent: no NVIDIA GPU, no probe needed


@dataclass(frozen=True)
class Device:
    kind: str  # "cuda" or "cpu"
    index: int  # among the GPUs this server sees (CUDA_VISIBLE_DEVICES), or a CPU ordinal
    name: str = "cpu"
    memory_gib: float | None = None

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.index}"


def discover(gpus: str = "") -> list[Device]:
    """The devices to start workers on: `GPUS` ("" = every visible GPU, else indices such as
    "0,2"; "cpu" entries add CPU workers), or one CPU device when there is no GPU."""
    wanted = [entry.strip() for entry in gpus.split(",") if entry.strip()]
    cpus = [Device("cpu", ordinal) for ordinal in range(sum(e == "cpu" for e in wanted))]
    indices = [int(entry) for entry in wanted if entry != "cpu"]
    if wanted and not indices:
        return cpus
    visible = probe_gpus()
    if indices:
        missing = [index for index in indices if index >= len(visible)]
        if missing:
            raise ValueError(f"GPUS names GPU {missing[0]}, but this server sees "
                             f"{len(visible)} GPU(s)")
        return [visible[index] for index in indices] + cpus
    return visible or [Device("cpu", 0)]


def probe_gpus() -> list[Device]:
    """Every GPU visible to this server, read in a child process (so this one never holds a
    CUDA context)."""
    if not NVIDIA_DRIVER.is_dir() or os.environ.get("CUDA_VISIBLE_DEVICES") == "":
        return []
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        found = pool.apply(_read_gpus)
    return [Device("cuda", index, name, memory) for index, (name, memory) in enumerate(found)]


def _read_gpus() -> list[tuple[str, float]]:
    import torch

    if not torch.cuda.is_available():
        return []
    return [(props.name, round(props.total_memory / 2**30, 1)) for props in
            map(torch.cuda.get_device_properties, range(torch.cuda.device_count()))]


def pin(device: Device) -> None:
    """In a model process, before torch is imported: see only `device`."""
    if device.kind == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        return
    visible = [entry.strip() for entry in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
               if entry.strip()]
    os.environ["CUDA_VISIBLE_DEVICES"] = visible[device.index] if visible else str(device.index)
