"""The model table: every checkpoint a request's `model` may name, by short name, and which
pipeline serves it (`pipelines.table.pipeline_for` routes a request by it). Lotus's six and
Depth Anything V2's three are rows of one table, so `POST /depth` takes either family's names.
Standard library only (the catalogs are), so request models can be built from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .lotus.catalog import LOTUS_MODELS
from .depth_anything.catalog import DA2_MODELS


@dataclass(frozen=True)
class ModelRow:
    name: str
    pipeline: str  # the pipeline (its SPEC's name) that serves it
    task: Literal["depth", "normal"]
    disparity: bool  # a depth map of affine-invariant disparity (larger = nearer)
    metric: bool = False  # a depth map in metres


MODELS: dict[str, ModelRow] = {
    **{name: ModelRow(name, "lotus", model.task, model.disparity)
       for name, model in LOTUS_MODELS.items()},
    **{name: ModelRow(name, "depth_anything", "depth", model.disparity, not model.disparity)
       for name, model in DA2_MODELS.items()},
}


def model_names(task: str) -> tuple[str, ...]:
    return tuple(name for name, row in MODELS.items() if row.task == task)
