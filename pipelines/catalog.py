"""Which pipelines a server runs: `PIPELINES` if set, else every one whose checkpoint is present,
and where: in a model process of their own (the HTTP server) or in this one (RunPod's worker)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Pipeline
from .lotus import LotusDepth
from .sam3d import Sam3DObjects

if TYPE_CHECKING:
    from settings import Settings


def configured_pipelines(settings: "Settings") -> dict[str, Pipeline]:
    names = settings.pipeline_names
    if not names:
        names = [name for name, present in (
            ("sam3d", Sam3DObjects.checkpoint_present(settings.checkpoints_dir)),
            ("lotus", LotusDepth.checkpoint_present(settings.checkpoints_dir, settings.model_id)),
        ) if present]
    factories = {
        "sam3d": lambda: Sam3DObjects(settings.checkpoints_dir, settings.sam3d_source_dir,
                                      vram_gib=settings.sam3d_vram_gib,
                                      compile=settings.sam3d_compile,
                                      offload=settings.sam3d_offload),
        "lotus": lambda: LotusDepth(settings.checkpoints_dir, settings.model_id),
    }
    return {name: factories[name]() for name in names}


def serving_pipelines(settings: "Settings") -> dict[str, Pipeline]:
    """What the HTTP server runs: the configured pipelines, in a model process of their own
    (pipelines/process.py) unless MODEL_PROCESS=0."""
    pipelines = configured_pipelines(settings)
    if not settings.model_process or not pipelines:
        return pipelines
    from .process import remote_pipelines

    return remote_pipelines(settings, pipelines)
