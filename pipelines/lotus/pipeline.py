"""Lotus on the job queue: `Lotus` serves the checkpoints present (pipelines/lotus/catalog.py)
for depth and normal jobs, a photo or a video each, with infer.py's per-task step
(EnVision-Research/Lotus at b737e12, infer.py:163-217). Its forward passes are
pipelines/lotus/model.py's, imported in `load()` only: the HTTP process never loads torch.
"""

from __future__ import annotations

import logging
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Hashable, Iterator, Sequence

import numpy as np
from PIL import Image

from ..base import LOADING_WEIGHTS, Progress, Result
from ..errors import InvalidInput, NotLoaded, PipelineError
from ..maps import NORMAL_CONVENTION, finish_map
from ..video import Video, decode_frames
from .catalog import DEFAULT_MODELS, LOTUS_MODELS, is_test_checkpoint, present_models, \
    resolve_checkpoint
from .cost import time_limit
from .request import DepthRequest, LotusRequest
from .video import VIDEO_BATCH_FRAMES, write_video_result

if TYPE_CHECKING:
    from .model import LotusDPipeline

log = logging.getLogger(__name__)

# The options that change the model's computation: jobs equal in these, in `model` and in
# image size share one forward pass. Seed (one generator per job) and output format do not.
BATCH_OPTIONS = ("processing_res", "output_processing_res", "resample_method", "timestep",
                 "latent")


class Lotus:
    """The queue's view of Lotus: one job = one image -> one depth or normal file, from the
    checkpoint its request's `model` names, among those present (`served`)."""

    name: ClassVar[str] = "lotus"
    options_model: ClassVar[type] = DepthRequest
    oom_advice: ClassVar[str] = "Try a smaller processing_res."

    def __init__(self, checkpoints_dir: Path, model_id: str | None = None,
                 device_kind: str = "cpu", half_precision: bool = False):
        self.checkpoints_dir, self.model_id = Path(checkpoints_dir), model_id
        self.half_precision = half_precision  # LOTUS_HALF_PRECISION: fp16 weights on CUDA
        self.device_kind = device_kind  # where jobs run: "cuda" or "cpu" (time_limit)
        self.models: dict[str, "LotusDPipeline"] = {}

    @staticmethod
    def checkpoint_present(checkpoints_dir: Path, model_id: str | None = None) -> bool:
        return bool(model_id) or bool(present_models(checkpoints_dir))

    @cached_property
    def served(self) -> list[str]:
        """The table's models this server loads: those whose folder is in CHECKPOINTS_DIR
        when it starts, and the default depth model when MODEL_ID names its repository or
        no folder is there (it is then read from the Hugging Face cache,
        `resolve_checkpoint`, or fails to load and says so). Needs no model; read once (a
        folder copied in later is served from the next start)."""
        present = present_models(self.checkpoints_dir)
        default = DEFAULT_MODELS["depth"]
        if default not in present and (self.model_id or not present):
            present.append(default)
        # the default depth model first: a warm-up runs the first one served
        return sorted(present, key=lambda name: name != default)

    @property
    def model(self) -> "LotusDPipeline | None":
        """The default depth model's pipeline (the one a plain depth request runs)."""
        return self.models.get(DEFAULT_MODELS["depth"])

    def model_table(self) -> dict[str, dict]:
        """Upstream's six checkpoints and which are served here (/health's `models`)."""
        served = set(self.served)
        return {name: {"repo_id": self.model_id if name == DEFAULT_MODELS["depth"]
                       and self.model_id else model.repo_id, "task": model.task,
                       "mode": model.mode, "served": name in served}
                for name, model in LOTUS_MODELS.items()}

    @cached_property
    def notice(self) -> str | None:
        """What a user must know before trusting a result (health, log, web page): read
        from the checkpoints once, as they were when the server started (what it serves)."""
        test = [name for name in self.served
                if not (self.model_id and name == DEFAULT_MODELS["depth"])
                and is_test_checkpoint(self.checkpoints_dir / LOTUS_MODELS[name].folder)]
        if not test:
            return None
        return (f"Lotus runs tiny random test checkpoints (scripts/make_tiny_checkpoints.py) "
                f"for {', '.join(test)}: their maps are noise. Put the real "
                f"{', '.join(LOTUS_MODELS[name].folder for name in test)} checkpoint(s) in "
                "CHECKPOINTS_DIR for real results.")

    def check(self, options: LotusRequest) -> None:
        """A model that is not served here is a 400 naming those that are (DepthRequest.load
        checks processing_res against the image). Needs no model."""
        served = self.served
        for field, name in (("model", options.model),
                            ("normal_model", getattr(options, "normal_model", None))):
            if name is not None and name not in served:
                task = LOTUS_MODELS[name].task
                same_task = [model for model in served if LOTUS_MODELS[model].task == task]
                raise InvalidInput(
                    f"{field} {name} is not served here; {task} models served: "
                    f"{', '.join(same_task) or 'none'} (all served: "
                    f"{', '.join(served) or 'none'})")

    def load(self) -> None:
        import torch

        from .model import PIPELINES

        self.device_kind = "cuda" if torch.cuda.is_available() else "cpu"
        if self.notice:
            log.warning(self.notice)
        with LOADING_WEIGHTS:  # not beside another model's load in this process
            for name in self.served:
                self.models[name] = PIPELINES[LOTUS_MODELS[name].mode].from_pretrained(
                    self._path(name), device=self.device_kind,
                    half_precision=self.half_precision)

    def _path(self, name: str) -> Path:
        if name == DEFAULT_MODELS["depth"]:
            return resolve_checkpoint(self.checkpoints_dir, self.model_id)
        return self.checkpoints_dir / LOTUS_MODELS[name].folder

    def time_limit(self, options: LotusRequest, image: Image.Image) -> float | None:
        """Seconds after which this job is surely stuck, for the queue to cap
        JOB_TIMEOUT_SECONDS (`cost.time_limit`: one pass per frame, two for a relief lit by
        a normal model). Needs no model."""
        passes = image.frames if isinstance(image, Video) else 1
        if getattr(options, "normal_model", None):  # the relief's normals: a second model
            passes *= 2
        return time_limit(*image.size, options.processing_res, self.device_kind, passes)

    @staticmethod
    def batch_key(options: LotusRequest, image: Image.Image) -> Hashable:
        """Jobs with equal keys may share one forward pass (`run_batch`): the model, the
        image size and every option that changes the computation; a video is a batch of its
        own (its frames are batched in `run_batch`). Needs no model."""
        if isinstance(image, Video):
            return ("video", id(image))
        return (options.model, image.size, *(getattr(options, name) for name in BATCH_OPTIONS))

    def predict(self, options: LotusRequest, image: Image.Image,
                progress: Progress | None = None) -> np.ndarray:
        """The raw prediction for one image, at the size the options ask for: depth
        (height, width), normals (height, width, 3)."""
        return self._predict([(options, image)], progress)[0]

    def run(self, options: LotusRequest, image: Image.Image, output_stem: Path,
            progress: Progress) -> Result:
        return _raised(self.run_batch([(options, image, output_stem)], progress))[0]

    def run_batch(self, jobs: Sequence[tuple[LotusRequest, Image.Image, Path]],
                  progress: Progress) -> list[Result | PipelineError]:
        """Each job's result, in order: one forward pass per batch key (one for jobs of
        equal keys), each job with its own seed, output format and file. A job whose output
        is not finite or cannot be written gets a PipelineError in its place; the others
        complete. A failing forward pass (out of memory) raises for the whole batch. A
        video job (its `image` a `Video`) runs alone, `run_video`."""
        if len(jobs) == 1 and isinstance(jobs[0][1], Video):
            return [self.run_video(*jobs[0], progress)]
        predictions = self._predict([(options, image) for options, image, _ in jobs], progress)
        normal_maps = self._relief_normals(jobs, progress)
        progress("writing", 0.9)
        return [self._finish(options, prediction, image, stem, normal_map)
                for (options, image, stem), prediction, normal_map
                in zip(jobs, predictions, normal_maps)]

    def _relief_normals(self, jobs: Sequence[tuple[LotusRequest, Image.Image, Path]],
                        progress: Progress) -> list[np.ndarray | None]:
        """Each job's normal map for its relief (`normal_model`), else None: the normal
        model run with the job's own options (size, seed, processing), so its map lines up
        with the depth map pixel for pixel; jobs asking the same share a forward pass."""
        asking = [index for index, (options, _, _) in enumerate(jobs)
                  if getattr(options, "normal_model", None)]
        normal_maps: list[np.ndarray | None] = [None] * len(jobs)
        if asking:
            normal_jobs = [(options.model_copy(update={"model": options.normal_model}), image)
                           for options, image, _ in (jobs[i] for i in asking)]
            # after the depth pass's stages (at most 0.7), before writing (0.9)
            passes = self._predict(normal_jobs, lambda stage, fraction: progress(
                f"normals: {stage}", 0.7 + 0.2 * fraction))
            for index, normal_map in zip(asking, passes):
                normal_maps[index] = normal_map
        return normal_maps

    def run_video(self, options: LotusRequest, video: Video, output_stem: Path,
                  progress: Progress) -> Result:
        """A video's frames through the model (`_video_passes`), progress per frame and
        cancellable between forward passes (the progress callback raises JobCancelled).
        Written as `write_video_result` zips it."""
        predictions: list[np.ndarray] = []
        progress("decoding", 0.0)
        for passed in self._video_passes(options, decode_frames(video)):
            predictions.extend(passed)
            progress(f"frame {len(predictions)} of {video.frames}",
                     0.9 * min(len(predictions) / video.frames, 1.0))
        if not predictions:
            raise InvalidInput("video has no frames")
        if not all(np.isfinite(prediction).all() for prediction in predictions):
            raise PipelineError("the model produced non-finite values")
        progress("writing", 0.9)
        model = options.lotus_model
        path = write_video_result(Path(f"{output_stem}.zip"), model.task, predictions,
                                  video.fps, model.disparity)
        height, width = predictions[0].shape[:2]
        info: dict = {"model": options.model, "width": int(width), "height": int(height),
                      "frames": len(predictions), "fps": video.fps}
        if model.task == "depth":
            info.update(min=float(min(p.min() for p in predictions)),
                        max=float(max(p.max() for p in predictions)), disparity=model.disparity)
        else:
            info.update(NORMAL_CONVENTION)
        return Result(path=path, media_type="application/zip",
                      download_name=f"{model.task}_video.zip", info=info)

    def _video_passes(self, options: LotusRequest,
                      frames: Iterator[Image.Image]) -> Iterator[list[np.ndarray]]:
        """Each forward pass's predictions, in frame order. Lotus-D: VIDEO_BATCH_FRAMES
        frames a pass through `_predict`, each frame as a job of its own with the request's
        seed (so each equals the image request of that frame, as upstream's demo runs
        Lotus-D on each frame with a fresh generator of the seed, app.py:28-32,169).
        Lotus-G: one frame a pass (`LotusGPipeline.video`), each frame's noise carrying the
        previous frame's latent, so no frame can start before the one before it ends."""
        if options.lotus_model.mode == "generation":
            for annotation in self._model(options).video(frames, seed=options.seed,
                                                         **self._call_options(options)):
                yield [self._task_output(options, annotation)]
            return
        batch: list[Image.Image] = []
        for frame in frames:
            batch.append(frame)
            if len(batch) == VIDEO_BATCH_FRAMES:
                yield self._predict([(options, frame) for frame in batch], None)
                batch = []
        if batch:
            yield self._predict([(options, frame) for frame in batch], None)

    def _model(self, options: LotusRequest) -> "LotusDPipeline":
        model = self.models.get(options.model)
        if model is None:
            raise NotLoaded(f"Lotus model {options.model} is not loaded")
        return model

    @staticmethod
    def _call_options(options: LotusRequest) -> dict:
        """The request's options as the pipeline takes them."""
        return {"processing_res": options.processing_res,
                "match_input_res": not options.output_processing_res,
                "resample_method": options.resample_method, "timestep": options.timestep,
                "latent": options.latent}

    @staticmethod
    def _task_output(options: LotusRequest, annotation: np.ndarray) -> np.ndarray:
        """infer.py:209-213: depth is the mean of the three channels, normals all three."""
        return annotation.mean(axis=-1) if options.lotus_model.task == "depth" else annotation

    def _predict(self, jobs: Sequence[tuple[LotusRequest, Image.Image]],
                 progress: Progress | None) -> list[np.ndarray]:
        """One raw prediction per (options, image), in order; one forward pass per key."""
        groups: dict[Hashable, list[int]] = {}
        for index, (options, image) in enumerate(jobs):
            groups.setdefault(self.batch_key(options, image), []).append(index)
        predictions: list[np.ndarray] = [np.empty(0)] * len(jobs)
        for indices in groups.values():
            options = jobs[indices[0]][0]
            model = self._model(options)
            # Upstream seeds the global generator and its own with seed_all(seed) and
            # torch.Generator(device).manual_seed(seed) (infer.py:105-106, 169-172): the
            # posterior is sampled from the first (pipeline.py:1121, 1297), Lotus-G's noise
            # from the second (pipeline.py:1286-1295, 633-653). Fresh generators on the
            # model's device with the same seed draw the same numbers, one pair per job, so
            # each job equals upstream's run of its image alone.
            seeds = [jobs[i][0].seed for i in indices]
            batch = model([jobs[i][1] for i in indices], generator=model.generators(seeds),
                          noise_generator=model.generators(seeds), on_stage=progress,
                          **self._call_options(options))
            for index, prediction in zip(indices, batch):
                predictions[index] = self._task_output(options, prediction)
        return predictions

    @staticmethod
    def _finish(options: LotusRequest, prediction: np.ndarray, photo: Image.Image,
                output_stem: Path, normal_map: np.ndarray | None = None
                ) -> Result | PipelineError:
        model = options.lotus_model
        return finish_map(options, prediction, photo, output_stem, normal_map,
                          task=model.task, disparity=model.disparity)


def _raised(results: list[Result | PipelineError]) -> list[Result]:
    """The results, or the first job's error raised (`run` answers or fails)."""
    for result in results:
        if isinstance(result, PipelineError):
            raise result
    return results
