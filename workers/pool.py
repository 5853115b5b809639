"""Which model workers a server starts, and the stand-in the queue and the API see for
each pipeline they run.

One worker per device and MAX_CONCURRENT slot for each pipeline: SAM 3D Objects and
Lotus-D on every device (Lotus-D needs a few GB beside SAM 3D's admission figures), so a
pod with four GPUs runs four 3D jobs at once and a depth map never waits for a 3D one.
`segment` (`POST /segment`'s masks) has one worker, on the CPU: rembg there takes seconds,
and it takes no GPU memory from the models.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from pipelines.base import DeviceAware, MemoryAdmitting, Pipeline, Progress, Result
from pipelines.catalog import http_pipelines
from pipelines.table import SPECS

from .devices import Device, discover
from .model_process import ModelWorker

if TYPE_CHECKING:
    from pathlib import Path

    from settings import Settings

log = logging.getLogger(__name__)


class RemotePipeline:
    """One pipeline as the parent sees it: `check`, `capabilities` and `notice` answered by
    an unloaded twin; ready once any of its workers has loaded."""

    def __init__(self, twin: Pipeline, workers: list[ModelWorker]):
        self._twin, self.workers = twin, workers
        self.name, self.options_model = twin.name, twin.options_model
        self.oom_advice = twin.oom_advice

    def load(self) -> None:
        """Ready once any worker is (one that keeps dying while loading holds up nothing);
        failed once every worker's first load has failed."""
        while not any(w.state in ("ready", "busy") for w in self.workers):
            if all(w.loaded.is_set() for w in self.workers):
                raise RuntimeError(self.workers[0].reason)
            time.sleep(0.1)
        loaded = [w for w in self.workers if w.state != "failed"]
        sizes = [w.details["vram_gib"] for w in loaded if w.details.get("vram_gib")]
        if sizes and isinstance(self._twin, MemoryAdmitting):
            self._twin.vram_gib = max(sizes)  # a job is refused only if no GPU could fit it

    def __getattr__(self, name: str) -> Any:
        """What needs no model (capabilities, notice, batch_key, time_limit) comes from
        the twin."""
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._twin, name)

    def check(self, options: Any) -> None:
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
    workers: dict[str, list[ModelWorker]] = {}
    for name in twins:
        workers[name] = _workers(settings, name, devices)
        for worker in workers[name]:
            worker.start()
    return {name: RemotePipeline(twin, workers[name]) for name, twin in twins.items()}, workers


def _workers(settings: "Settings", name: str, devices: list[Device]) -> list[ModelWorker]:
    """The model table's placement: "cpu", one worker on the CPU; "gpu", one per device and
    MAX_CONCURRENT slot, each batching up to the model's `batch_limit` on its device."""
    spec = SPECS[name]
    if spec.placement == "cpu":
        return [ModelWorker(settings, name, Device("cpu", 0))]
    return [ModelWorker(settings, name, device, slot,
                        spec.batch_limit(settings, device) if spec.batch_limit else 1)
            for device in devices for slot in range(settings.max_concurrent)]
