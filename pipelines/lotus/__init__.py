"""Lotus depth and surface normals, every upstream checkpoint, on stock diffusers parts.

Lotus is built from Stable Diffusion 2: the VAE encodes the photo, one UNet call at t=999
(conditioned on an empty prompt and a task embedding) predicts the annotation latent, and
the VAE decodes it. Lotus-D (regression) feeds the UNet the photo's latent; Lotus-G
(generation) feeds it that latent beside a seeded noise latent. Line numbers in this package
are upstream's (EnVision-Research/Lotus at b737e12); tests hold the output to a reference
that follows those lines.

- `catalog` (standard library; the Dockerfile runs it alone): upstream's six checkpoints
  (`LOTUS_MODELS`), their folders under CHECKPOINTS_DIR, test weights told from real ones.
- `request`: `DepthRequest` and `NormalRequest` (`LotusRequest`s: a photo or a video, and
  upstream's options), checked at submission.
- `cost` (standard library): the size the model sees and the time a job may take.
- `model` (torch, diffusers; imported only where a model runs): `LotusDPipeline` and
  `LotusGPipeline`, upstream's classes of those names (pipeline.py:1016-1164 and 1166-1360,
  utils/image_utils.py:68-160), diffusers-style (`from_pretrained`, `__call__`).
- `pipeline`: `Lotus`, the queue's view of it (batches, a video's frames, the files).
- `video`: a video job's result, a zip of the colourised mp4 and the raw frames.
- `spec`: `SPEC`, its row of the model table (pipelines/table.py).

Every name below is importable from `pipelines.lotus` itself: the previous release's job
journal names `pipelines.lotus:DepthRequest` and `pipelines.lotus:NormalRequest`
(jobs/journal.py rebuilds a job's options by `module:qualname`). They load on first use
(PEP 562 `__getattr__`), not when the package is imported: pipelines/models.py reads
`catalog` to build the table that `request` reads back, so an eager import of `request` here
would make `import pipelines.models` a circle.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "catalog": ("CHECKPOINT_FOLDER", "DEFAULT_MODEL_ID", "DEFAULT_MODELS", "LOTUS_FOLDER",
                "LOTUS_MODELS", "LotusModel", "TEST_CHECKPOINT_MARKER", "is_test_checkpoint",
                "present_models", "resolve_checkpoint"),
    "request": ("DepthRequest", "FREE_PROCESSING_RES", "LotusRequest", "MAX_UPSCALE",
                "NormalRequest", "ResampleMethod", "max_processing_res"),
    "cost": ("resized_size",),
    "video": ("VIDEO_BATCH_FRAMES",),
    "pipeline": ("BATCH_OPTIONS", "Lotus"),
    "spec": ("SPEC",),
}
_HOME = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_HOME)


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
