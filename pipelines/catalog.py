"""Which pipelines a server runs: `PIPELINES` if set, else every one whose checkpoint is present
(the model table's `checkpoint_present`, pipelines/table.py). The HTTP server runs them in model
workers (workers/pool.py), RunPod's worker in its own process; the HTTP server adds the ones
served beside another (`needs`: `segment`, `POST /segment`, beside SAM 3D Objects)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Pipeline
from .config import PipelineConfig
from .table import SPECS

if TYPE_CHECKING:
    from settings import Settings


def configured_pipelines(settings: "Settings", names: list[str] | None = None
                         ) -> dict[str, Pipeline]:
    """The pipelines to serve, unloaded; `names` picks some of them (a model worker's one)."""
    config = PipelineConfig.from_settings(settings)
    names = names or settings.pipeline_names
    if not names:
        names = [name for name, spec in SPECS.items()
                 if spec.checkpoint_present is not None and spec.checkpoint_present(config)]
    return {name: SPECS[name].factory(config) for name in names}


def http_pipelines(settings: "Settings") -> dict[str, Pipeline]:
    """The HTTP server's: the configured pipelines, and each one served beside another
    (`needs`) wherever that one is (a mask is of use only to a 3D job; RunPod's handler has
    no such task)."""
    pipelines = configured_pipelines(settings)
    beside = [name for name, spec in SPECS.items() if spec.needs in pipelines]
    if beside:
        pipelines.update(configured_pipelines(settings, beside))
    return pipelines
