"""The queue's view of Depth Anything V2: one job = one photo -> one depth file, from the
checkpoint its request's `model` names (the model table, pipelines/models.py), among those
present in CHECKPOINTS_DIR. Torch-free until `load` (the HTTP process builds it to check and
size jobs); the forward pass is `model.DepthAnythingV2`, transformers' own model and processor.

Its maps go through the same writer as Lotus's (pipelines/maps.py): a relative checkpoint's
map is affine-invariant disparity; a metric one's is depth in metres, said in the answer
(`units`), and its relief (glb, ply) is true scale for the request's `fov_degrees`.
"""

from __future__ import annotations

import logging
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Hashable, Sequence

from PIL import Image

from ..base import LOADING_WEIGHTS, Progress, Result
from ..errors import InvalidInput, NotLoaded, PipelineError
from ..lotus import DepthRequest
from ..maps import finish_map
from . import cost
from .catalog import DA2_MODELS, is_test_checkpoint, present_models

if TYPE_CHECKING:
    from .model import DepthAnythingV2

log = logging.getLogger(__name__)



class DepthAnything:
    """Depth Anything V2's checkpoints present in CHECKPOINTS_DIR, served at POST /depth."""

    name: ClassVar[str] = "depth_anything"
    options_model: ClassVar[type] = DepthRequest
    oom_advice: ClassVar[str] = "Send a smaller photo, or fewer at once (DEPTH_BATCH)."

    def __init__(self, checkpoints_dir: Path, device_kind: str = "cpu"):
        self.checkpoints_dir = Path(checkpoints_dir)
        self.device_kind = device_kind
        self.models: dict[str, "DepthAnythingV2"] = {}

    @staticmethod
    def checkpoint_present(checkpoints_dir: Path) -> bool:
        return bool(present_models(checkpoints_dir))

    @cached_property
    def served(self) -> list[str]:
        """The table's checkpoints whose folder is in CHECKPOINTS_DIR at start-up."""
        return present_models(self.checkpoints_dir)

    def model_table(self) -> dict[str, dict]:
        """The three checkpoints, what their maps are, their licences, which are served."""
        served = set(self.served)
        return {name: {"repo_id": model.repo_id, "task": "depth", "kind": model.kind,
                       "units": model.units, "licence": model.licence,
                       "licence_source": model.licence_source, "served": name in served}
                for name, model in DA2_MODELS.items()}

    @cached_property
    def notice(self) -> str | None:
        test = [name for name in self.served
                if is_test_checkpoint(self.checkpoints_dir / DA2_MODELS[name].folder)]
        if not test:
            return None
        return (f"Depth Anything V2 runs tiny random test checkpoints "
                f"(scripts/make_tiny_checkpoints.py) for {', '.join(test)}: their maps are "
                f"noise. Put the real {', '.join(DA2_MODELS[n].folder for n in test)} "
                "checkpoint(s) in CHECKPOINTS_DIR for real results.")

    def check(self, options: DepthRequest) -> None:
        """What this model cannot do, as a 400 naming what it can. Needs no model."""
        if options.model not in self.served:
            raise InvalidInput(f"model {options.model} is not served here; Depth Anything V2 "
                               f"models served: {', '.join(self.served) or 'none'}")
        if options.normal_model is not None:
            raise InvalidInput("normal_model lights a relief with Lotus's normals, beside a "
                               "Lotus depth model; Depth Anything V2's relief takes its "
                               "normals from its triangles")
        if options.is_video:
            raise InvalidInput("video: Depth Anything V2 takes photos; a video's depth comes "
                               "from a Lotus depth model")

    def load(self) -> None:
        import torch

        from .model import DepthAnythingV2

        self.device_kind = "cuda" if torch.cuda.is_available() else "cpu"
        if self.notice:
            log.warning(self.notice)
        with LOADING_WEIGHTS:
            for name in self.served:
                self.models[name] = DepthAnythingV2.from_pretrained(
                    self.checkpoints_dir / DA2_MODELS[name].folder, device=self.device_kind)

    def time_limit(self, options: DepthRequest, image: Image.Image) -> float | None:
        return cost.time_limit(*image.size, self.device_kind)

    @staticmethod
    def batch_key(options: DepthRequest, image: Image.Image) -> Hashable:
        """Photos for one checkpoint whose processed sizes are equal share a forward pass
        (`DepthAnythingV2.predict` groups by it); output and fov_degrees only change the
        file."""
        return (options.model, cost.processing_size(*image.size))

    def run(self, options: DepthRequest, image: Image.Image, output_stem: Path,
            progress: Progress) -> Result:
        return _raised(self.run_batch([(options, image, output_stem)], progress))[0]

    def run_batch(self, jobs: Sequence[tuple[DepthRequest, Image.Image, Path]],
                  progress: Progress) -> list[Result | PipelineError]:
        """Each job's result, in order: one forward pass per checkpoint and processed size;
        a job whose map cannot be written fails alone."""
        progress("predicting", 0.1)
        maps: list = [None] * len(jobs)
        refused: dict[int, PipelineError] = {}
        by_model: dict[str, list[int]] = {}
        for index, (options, image, _) in enumerate(jobs):
            why = cost.refusal(*image.size)  # a strip the processor cannot size: this job
            if why is not None:
                refused[index] = InvalidInput(why)
                continue
            by_model.setdefault(options.model, []).append(index)
        for name, indices in by_model.items():
            model = self.models.get(name)
            if model is None:
                raise NotLoaded(f"Depth Anything V2 model {name} is not loaded")
            for index, prediction in zip(indices, model.predict([jobs[i][1] for i in indices])):
                maps[index] = prediction
        progress("writing", 0.9)
        return [refused[index] if index in refused else
                finish_map(options, prediction, image, stem, task="depth",
                           disparity=DA2_MODELS[options.model].disparity,
                           metric=not DA2_MODELS[options.model].disparity)
                for index, ((options, image, stem), prediction) in enumerate(zip(jobs, maps))]


def _raised(results: list[Result | PipelineError]) -> list[Result]:
    for result in results:
        if isinstance(result, PipelineError):
            raise result
    return results  # type: ignore[return-value]
