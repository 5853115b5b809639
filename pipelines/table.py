"""The model table: every model's `SPEC` (pipelines/spec.py), in the order the API lists them.

Adding a model is a module (or package) under pipelines/ that ends with a SPEC, and its row
here. The routes, OpenAPI, /health, RunPod's tasks, the model workers and the restore after
a restart all read this table.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from . import sam3d, segment
from .lotus import spec as lotus
from .depth_anything import spec as depth_anything
from .spec import Endpoint, OutputFormat, PipelineSpec

SPECS: dict[str, PipelineSpec] = {spec.name: spec for spec in (
    sam3d.SPEC,
    lotus.SPEC,
    depth_anything.SPEC,
    segment.SPEC,
)}


def endpoints() -> dict[str, Endpoint]:
    """Every endpoint (`generate`, `depth`, ...), in the table's order; the first model to
    declare a path owns its request model and answer."""
    found: dict[str, Endpoint] = {}
    for spec in SPECS.values():
        for endpoint in spec.endpoints:
            found.setdefault(endpoint.path, endpoint)
    return found


def serving(path: str) -> list[str]:
    """The pipelines that serve `POST /<path>`."""
    return [spec.name for spec in SPECS.values()
            if any(endpoint.path == path for endpoint in spec.endpoints)]


def pipeline_for(path: str, payload: BaseModel) -> str:
    """Which pipeline runs this request: the one whose models include its `model` when
    several serve the endpoint, else the only one."""
    names = serving(path)
    model = getattr(payload, "model", None)
    for name in names:
        if model is not None and model in SPECS[name].models:
            return name
    return names[0]


def tasks() -> dict[str, tuple[str, Endpoint]]:
    """RunPod's `task` values: task -> (the first pipeline to declare it, its endpoint);
    `pipeline_for(endpoint.path, request)` picks among the endpoint's pipelines by `model`."""
    found: dict[str, tuple[str, Endpoint]] = {}
    for spec in SPECS.values():
        for endpoint in spec.endpoints:
            if endpoint.task is not None:
                found.setdefault(endpoint.task, (spec.name, endpoint))
    return found


def auto_started() -> list[str]:
    """The models a server starts on its own when their checkpoint is present."""
    return [name for name, spec in SPECS.items() if spec.checkpoint_present is not None]


def media_types() -> list[str]:
    """Every result file's media type, once each, in the table's order."""
    return list(dict.fromkeys(fmt.media_type for spec in SPECS.values() for fmt in spec.outputs))


def result_format(path: Path) -> tuple[str, OutputFormat] | None:
    """The model that writes a file like `path`, and its format: for a result file with no
    journal row (restored after a damaged journal). A model whose formats fit it
    alone wins; for one both could have written, the first in the table."""
    for name, spec in SPECS.items():
        fmt = spec.output(path)
        if fmt is not None:
            return name, fmt
    return None
