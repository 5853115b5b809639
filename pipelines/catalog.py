"""Which pipelines a server runs: `PIPELINES` if set, else every one whose checkpoint is present.
The HTTP server runs them in model workers (workers/pool.py), RunPod's worker in its own process;
the HTTP server adds `segment` (`POST /segment`) beside SAM 3D Objects."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Pipeline
from .lotus import LotusDepth
from .sam3d import Sam3DObjects
from .segment import Segmenter

if TYPE_CHECKING:
    from settings import Settings


def configured_pipelines(settings: "Settings", names: list[str] | None = None
                         ) -> dict[str, Pipeline]:
    """The pipelines to serve, unloaded; `names` picks some of them (a model worker's one)."""
    names = names or settings.pipeline_names
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
        "lotus": lambda: LotusDepth(settings.checkpoints_dir, settings.model_id,
                                    half_precision=settings.lotus_half_precision),
        "segment": Segmenter,
    }
    return {name: factories[name]() for name in names}


def http_pipelines(settings: "Settings") -> dict[str, Pipeline]:
    """The HTTP server's: the configured pipelines, and `segment` wherever SAM 3D Objects
    is (a mask is of use only to a 3D job; RunPod's handler has no such task)."""
    pipelines = configured_pipelines(settings)
    if "sam3d" in pipelines:
        pipelines.update(configured_pipelines(settings, ["segment"]))
    return pipelines
