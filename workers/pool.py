"""Which model workers a server starts, and the stand-in the queue and the API see for
each pipeline they run.

One worker per device and MAX_CONCURRENT slot for each pipeline: SAM 3D Objects on every
device, so a pod with four GPUs runs four 3D jobs at once, and Lotus-D on every device
where it leaves SAM 3D room for all its outputs (`lotus_devices`), so a depth map never
waits for a 3D one. `segment` (`POST /segment`'s masks) has one worker, on the CPU: rembg
there takes seconds, and it takes no GPU memory from the models.

SAM 3D's jobs are admitted against what its card leaves it (`Memory.sam3d_budget`): the
card's size (or SAM3D_VRAM_GIB) less what the other workers on that device hold, each as
measured in its process at load and after its largest job (`ModelProcess.held_gib`), or
estimated until it has loaded. Not `torch.cuda.mem_get_info` at job start: the HTTP process
never touches CUDA yet must refuse at submission (507, before the job waits in the queue),
and a free-memory reading would count SAM 3D's own weights as taken and move with whatever
depth batch happens to be running, so a job's admission would depend on timing.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import TYPE_CHECKING, Any

from pipelines.base import (DeviceAware, MemoryAdmitting, Noticing, Pipeline, Progress,
                            Result)
from pipelines.catalog import http_pipelines
from pipelines.sam3d_parts.memory import MEMORY_NEEDED_GIB_OFFLOAD
from pipelines.table import SPECS

from .devices import Device, discover
from .model_process import ModelProcess
from .worker import WorkerState

if TYPE_CHECKING:
    from pathlib import Path

    from settings import Settings

log = logging.getLogger(__name__)

# GPU memory a worker is counted at until it has loaded and been measured, by pipeline and
# LOTUS_HALF_PRECISION. Lotus-D's UNet and VAE (951 M parameters, bench/sd2_size.py --count;
# its text encoder is freed after load) take 1.77 GiB in fp16, 3.54 in fp32; with the CUDA
# context and a 768 px depth batch's activations: estimates, not readings.
ESTIMATED_GIB = {("lotus", True): 3.5, ("lotus", False): 6.0,
                 # Depth Anything V2 Small: 99 MB of fp32 weights, a CUDA context and a batch's
                 # activations (pipelines/depth_anything/__init__.py): an estimate
                 ("depth_anything", True): 1.0, ("depth_anything", False): 1.0}
# What Lotus-D must leave SAM 3D on a card: its largest output in low-memory mode
# (textured GLB, pipelines/sam3d_parts/memory.py MEMORY_NEEDED_GIB_OFFLOAD).
SAM3D_ROOM_GIB = max(MEMORY_NEEDED_GIB_OFFLOAD.values())


class Memory:
    """Who holds what on each device, and what that leaves SAM 3D."""

    def __init__(self, settings: "Settings"):
        self.settings = settings
        self.workers: list[ModelProcess] = []

    def card_gib(self, device: Device) -> float | None:
        """SAM3D_VRAM_GIB (a shared or MIG GPU; the tests' stand-in card) or the card's."""
        return self.settings.sam3d_vram_gib or device.memory_gib

    def estimate(self, pipeline: str, device: Device) -> float:
        """A worker's footprint before it is measured: STAND_IN_GPU_FOOTPRINT_GIB's figure
        (tests), else ESTIMATED_GIB on a GPU, nothing on a CPU."""
        stand_in = self.settings.stand_in_footprints.get(pipeline)
        if stand_in is not None:
            return stand_in
        if device.kind != "cuda":
            return 0.0
        return ESTIMATED_GIB.get((pipeline, self.settings.lotus_half_precision), 0.0)

    def held(self, worker: ModelProcess) -> float:
        if worker.state is WorkerState.FAILED:
            return 0.0
        measured = worker.held_gib
        return measured if measured is not None else self.estimate(worker.pipeline_name,
                                                                    worker.device)

    def others(self, worker: ModelProcess) -> list[ModelProcess]:
        return [other for other in self.workers
                if other is not worker and other.device == worker.device]

    def sam3d_budget(self, worker: ModelProcess) -> float | None:
        card = self.card_gib(worker.device)
        if card is None:
            return None
        return round(max(card - sum(map(self.held, self.others(worker))), 0.0), 2)

    @staticmethod
    def _source(worker: ModelProcess) -> str:
        if worker.held_gib is None:
            return " (estimated)"
        return " (stand-in)" if worker.details.get("gpu_footprint_source") == "stand-in" else ""

    def sharing(self, worker: ModelProcess) -> str | None:
        """Why this SAM 3D worker has less than its card, in words (None if it has it all)."""
        holders = [f"{other.label} {self.held(other):g} GiB{self._source(other)}"
                   for other in self.others(worker) if self.held(other) > 0]
        if not holders:
            return None
        return (f"of {self.card_gib(worker.device):g} GiB on {worker.device.label}, "
                f"{', '.join(holders)} held by the other models there; set PIPELINES=sam3d "
                "(and serve Lotus from another GPU or server) to give SAM 3D the whole card")


class RemotePipeline:
    """One pipeline as the parent sees it: `check`, `capabilities` and `notice` answered by
    an unloaded twin; ready once any of its workers has loaded."""

    def __init__(self, twin: Pipeline, workers: list[ModelProcess], memory: Memory | None = None,
                 placement_notice: str | None = None):
        self._twin, self.workers = twin, workers
        self.name, self.options_model = twin.name, twin.options_model
        self.oom_advice = twin.oom_advice
        self._memory, self._placement_notice = memory, placement_notice

    def load(self) -> None:
        """Ready once any worker is (one that keeps dying while loading holds up nothing);
        failed once every worker's first load has failed."""
        while not any(w.state.up for w in self.workers):
            if all(w.loaded.is_set() for w in self.workers):
                raise RuntimeError(self.workers[0].reason)
            time.sleep(0.1)
        self._admit_against_budget()

    def _admit_against_budget(self) -> None:
        """SAM 3D's twin admits against the largest budget any of its workers has now (a job
        is refused only if no GPU could fit it), and says what shares that card."""
        if not isinstance(self._twin, MemoryAdmitting):
            return
        loaded = [w for w in self.workers if w.state is not WorkerState.FAILED]
        if self._memory is not None:
            budgets = [(self._memory.sam3d_budget(w), w) for w in loaded]
            budgets = [(budget, w) for budget, w in budgets if budget is not None]
            if budgets:
                budget, worker = max(budgets, key=lambda pair: pair[0])
                self._twin.vram_gib = budget
                self._twin.memory_note = self._memory.sharing(worker)
                return
        sizes = [w.details["vram_gib"] for w in loaded if w.details.get("vram_gib")]
        if sizes:
            self._twin.vram_gib = max(sizes)  # a job is refused only if no GPU could fit it

    @property
    def capabilities(self) -> dict:
        self._admit_against_budget()
        return self._twin.capabilities

    @property
    def notice(self) -> str | None:
        twin = self._twin.notice if isinstance(self._twin, Noticing) else None
        notices = [n for n in (twin, self._placement_notice) if n]
        return " ".join(notices) or None

    def __getattr__(self, name: str) -> Any:
        """What needs no model (capabilities, notice, batch_key, time_limit) comes from
        the twin."""
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._twin, name)

    def check(self, options: Any) -> None:
        self._admit_against_budget()
        self._twin.check(options)

    def run(self, options: Any, image: Any, output_stem: "Path", progress: Progress) -> Result:
        raise RuntimeError("remote pipelines run through their workers' lanes")


def serving_pipelines(settings: "Settings") -> tuple[dict[str, Pipeline], dict[str, list]]:
    """What the HTTP server runs: the configured pipelines and, unless MODEL_PROCESS=0,
    their model workers (started here, loading in the background)."""
    twins = http_pipelines(settings)
    if not settings.model_process or not twins:
        return twins, {}
    devices = discover(settings.gpus)
    for twin in twins.values():  # the twins' cost models (time_limit) know the device kind
        if isinstance(twin, DeviceAware):
            twin.device_kind = devices[0].kind
    log.info("model workers on %s", ", ".join(
        f"{d.label} ({d.name}{f', {d.memory_gib} GiB' if d.memory_gib else ''})"
        for d in devices))
    memory = Memory(settings)
    placed, notice = (lotus_devices(memory, devices) if {"sam3d", "lotus"} <= set(twins)
                      else (devices, None))
    if notice:
        log.warning("%s", notice)
    workers: dict[str, list[ModelProcess]] = {}
    for name in twins:
        workers[name] = _workers(settings, name, placed if name == "lotus" else devices)
        memory.workers.extend(workers[name])
    for worker in workers.get("sam3d", []):
        worker.memory_budget = functools.partial(memory.sam3d_budget, worker)
    for worker in (w for ws in workers.values() for w in ws):
        worker.start()
    return {name: RemotePipeline(twin, workers[name], memory,
                                 notice if name == "sam3d" else None)
            for name, twin in twins.items()}, workers


def lotus_devices(memory: Memory, devices: list[Device]) -> tuple[list[Device], str | None]:
    """Where Lotus-D goes beside SAM 3D: every device where it leaves SAM 3D SAM3D_ROOM_GIB;
    if none does and there are several, the last one alone (SAM 3D has the others whole);
    with one device too small for both, that device, and a notice saying so (the log and
    /health's notices.sam3d)."""
    def room(device: Device) -> float | None:
        card = memory.card_gib(device)
        return None if card is None else card - memory.estimate("lotus", device)

    roomy = [d for d in devices if room(d) is None or room(d) >= SAM3D_ROOM_GIB]
    if roomy:
        return roomy, None
    if len(devices) > 1:
        return devices[-1:], None
    device = devices[0]
    return devices, (
        f"Lotus-D shares {device.label} ({memory.card_gib(device):g} GiB) with SAM 3D, which "
        f"then has about {room(device):.1f} GiB, less than textured GLB needs "
        f"({SAM3D_ROOM_GIB:g} GiB in low-memory mode): such jobs are refused (507). Set "
        "PIPELINES=sam3d on this server and serve Lotus from another GPU or server.")


def _workers(settings: "Settings", name: str, devices: list[Device]) -> list[ModelProcess]:
    """The model table's placement: "cpu", one worker on the CPU; "gpu", one per device and
    MAX_CONCURRENT slot, each batching up to the model's `batch_limit` on its device."""
    spec = SPECS[name]
    if spec.placement == "cpu":
        return [ModelProcess(settings, name, Device("cpu", 0))]
    return [ModelProcess(settings, name, device, slot,
                        spec.batch_limit(settings, device) if spec.batch_limit else 1)
            for device in devices for slot in range(settings.max_concurrent)]
