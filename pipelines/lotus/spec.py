"""Lotus's row of the model table (pipelines/table.py): `POST /depth` and `POST /normal`
(RunPod's `task: depth` and `normal`) for its six checkpoints, a photo or a video each, in a
lane and model workers of its own."""

from __future__ import annotations

from ..device import depth_batch
from ..outputs import DEPTH_FORMATS, NORMAL_FORMATS
from ..relief import RELIEF_FORMATS
from ..spec import Endpoint, OutputFormat, PipelineSpec
from .catalog import LOTUS_MODELS
from .pipeline import Lotus
from .request import DepthRequest, NormalRequest


SPEC = PipelineSpec(
    name="lotus",
    unconfigured=("not configured: no Lotus checkpoint in CHECKPOINTS_DIR and no MODEL_ID; "
                  "`make serve` makes tiny test weights, DEPLOY.md says how to get real ones"),
    endpoints=(
        Endpoint("depth", DepthRequest, "Queue a depth job", "Depth, answered as JSON",
                 answer="DepthResult", answer_description="The depth map and its range",
                 task="depth"),
        Endpoint("normal", NormalRequest, "Queue a surface-normal job",
                 "Surface normals, answered as JSON", answer="NormalResult",
                 answer_description="The normal map and its convention", task="normal"),
    ),
    factory=lambda config: Lotus(config.checkpoints_dir, config.model_id,
                                 half_precision=config.lotus_half_precision),
    checkpoint_present=lambda config: Lotus.checkpoint_present(
        config.checkpoints_dir, config.model_id),
    outputs=tuple(OutputFormat(f"{task} {name}", suffix, media_type, download_name)
                  for task, formats in (("depth", {**DEPTH_FORMATS, **RELIEF_FORMATS}),
                                        ("normal", NORMAL_FORMATS))
                  for name, (_, suffix, media_type, download_name) in formats.items())
    + tuple(OutputFormat(f"{task} video", ".zip", "application/zip", f"{task}_video.zip",
                         zip_member=".mp4") for task in ("depth", "normal")),
    placement="gpu",
    batch_limit=depth_batch,
    memory="a few GB beside SAM 3D Objects' admission figures",
    models=tuple(LOTUS_MODELS),
)
