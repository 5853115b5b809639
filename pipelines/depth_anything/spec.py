"""Depth Anything V2's row of the model table (pipelines/table.py): it serves `POST /depth`
(and RunPod's `task: depth`) for the requests whose `model` is one of its checkpoints, in a
lane and workers of its own, batched like Lotus-D."""

from __future__ import annotations

from ..device import depth_batch
from ..lotus import DepthRequest
from ..outputs import DEPTH_FORMATS
from ..relief import RELIEF_FORMATS
from ..spec import Endpoint, OutputFormat, PipelineSpec
from .catalog import DA2_MODELS
from .pipeline import DepthAnything


SPEC = PipelineSpec(
    name="depth_anything",
    unconfigured=("not configured: no Depth Anything V2 checkpoint in CHECKPOINTS_DIR; "
                  "scripts/download_checkpoints.sh fetches them (DEPLOY.md)"),
    endpoints=(Endpoint("depth", DepthRequest, "Queue a depth job", "Depth, answered as JSON",
                        answer="DepthResult", answer_description="The depth map and its range",
                        task="depth"),),
    factory=lambda config: DepthAnything(config.checkpoints_dir),
    checkpoint_present=lambda config: DepthAnything.checkpoint_present(
        config.checkpoints_dir),
    outputs=tuple(OutputFormat(f"depth {name}", suffix, media_type, download_name)
                  for name, (_, suffix, media_type, download_name)
                  in {**DEPTH_FORMATS, **RELIEF_FORMATS}.items()),
    placement="gpu",
    batch_limit=depth_batch,
    memory="about 100 MB of weights (ViT-S) per checkpoint",
    models=tuple(DA2_MODELS),
)
