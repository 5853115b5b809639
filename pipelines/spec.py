"""What a model declares to the server: one `PipelineSpec` per model, its `SPEC`.

Each model's package has its SPEC (pipelines/lotus/spec.py, pipelines/depth_anything/spec.py,
pipelines/segment/; SAM 3D Objects' is in pipelines/sam3d.py); pipelines/table.py lists them.
Everything that used to name a model by hand reads these rows instead: the routes and the
OpenAPI document (`endpoints`), `/health`, RunPod's tasks (`Endpoint.task`), which models a
server starts (`checkpoint_present`, `factory`, `needs`), where its workers run (`placement`,
`batch_limit`), and what a result file is (`outputs`: the restore after a restart names a
lone file's model and media type from them).

BentoML's idea (one loop over an API table), kept to plain dataclasses: a model adds rows,
never a branch in the server.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Literal

from pydantic import BaseModel

if TYPE_CHECKING:
    from settings import Settings
    from workers.devices import Device

    from .base import Pipeline
    from .config import PipelineConfig


@dataclass(frozen=True)
class OutputFormat:
    """One kind of result file: the `output` (or `output_format`) value that asks for it, its
    suffix, media type and download name. `zip_member`: for a `.zip`, a suffix only its
    own zips hold (an OBJ zip's `.obj`, a video job's `.mp4`), so a lone zip is told apart."""

    name: str
    suffix: str
    media_type: str
    download_name: str
    zip_member: str | None = None


@dataclass(frozen=True)
class Endpoint:
    """`POST /<path>` (and `/<path>/sync` unless `sync` is "only"), taking `request`.

    sync: "json" answers `/<path>/sync` with `answer` (the file base64 in `inline_field`);
    "file" answers it with the file itself; "only" has no queued form: `POST /<path>` waits
    and answers `answer`. `task`: the RunPod input's `task` that runs it (None: none)."""

    path: str
    request: type[BaseModel]
    summary: str
    sync_summary: str
    sync: Literal["json", "file", "only"] = "json"
    answer: str | None = None  # the name of its answer's schema in schemas.py
    answer_description: str = ""
    inline_field: str = "image_base64"
    task: str | None = None


@dataclass(frozen=True)
class PipelineSpec:
    """Everything the server needs to know of one model, none of which loads it."""

    name: str
    endpoints: tuple[Endpoint, ...]
    # both given what a model needs of the settings, never the settings (pipelines/config.py)
    factory: Callable[["PipelineConfig"], "Pipeline"]
    # whether its weights are where the settings say (None: never started for its own sake)
    checkpoint_present: Callable[["PipelineConfig"], bool] | None
    outputs: tuple[OutputFormat, ...]
    # "gpu": a worker per device and MAX_CONCURRENT slot; "cpu": one worker, on the CPU
    placement: Literal["gpu", "cpu"] = "gpu"
    # jobs one worker runs as one forward pass on a device (None: one at a time)
    batch_limit: Callable[["Settings", "Device"], int] | None = None
    needs: str | None = None  # served only beside this pipeline
    memory: str = ""  # what it needs of a device, in words (DEPLOY.md has the figures)
    models: tuple[str, ...] = field(default=())  # the request `model` names it serves
    # why it is not served when `checkpoint_present` says no, and what to do (/health's
    # pipeline_reasons, the API's 501, the page's tooltip and the CLI say it)
    unconfigured: str = "not configured: its checkpoint is not in CHECKPOINTS_DIR"

    def output(self, path: Path) -> OutputFormat | None:
        """The format a result file of this model is, by its suffix (and for a zip its
        members); None for a file it never writes."""
        for fmt in self.outputs:
            if fmt.suffix == path.suffix and (fmt.zip_member is None
                                              or _zip_holds(path, fmt.zip_member)):
                return fmt
        return None


def _zip_holds(path: Path, suffix: str) -> bool:
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith(suffix) for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False
