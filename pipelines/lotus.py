"""Lotus depth and surface normals, every upstream checkpoint, on stock diffusers parts.

Lotus is built from Stable Diffusion 2: the VAE encodes the photo, one UNet call at t=999
(conditioned on an empty prompt and a task embedding) predicts the annotation latent, and
the VAE decodes it. Lotus-D (regression) feeds the UNet the photo's latent; Lotus-G
(generation) feeds it that latent beside a seeded noise latent. `LotusDPipeline` and
`LotusGPipeline` are upstream's classes of those names (EnVision-Research/Lotus at b737e12:
pipeline.py:1016-1164 and 1166-1360, utils/image_utils.py:68-160), diffusers-style
(`from_pretrained`, `__call__`); `LotusDepth` serves the checkpoints present on the job
queue, with infer.py's per-task step (infer.py:163-217). Upstream's six checkpoints are
pipelines/checkpoints.py's `LOTUS_MODELS`. The pipelines themselves are in `lotus_model.py`:
torch is imported only where a model runs. Line numbers below are upstream's; tests hold the
output to a reference that follows those lines.
"""

from __future__ import annotations

import logging
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Hashable, Iterator, Literal, Sequence

import numpy as np
from PIL import Image
from pydantic import Field, model_validator

from .base import LOADING_WEIGHTS, Progress, Result
from .errors import InvalidInput, NotLoaded, PipelineError
from .checkpoints import (DEFAULT_MODELS, LOTUS_FOLDER, LOTUS_MODELS, LotusModel,
                          is_test_checkpoint, present_models)
from .fetch import fetch_url
from .images import ImageData, ImageInput, ImageLimits, JobInputs, image_data
from .maps import NORMAL_CONVENTION, finish_map  # noqa: F401 - NORMAL_CONVENTION: ours
from .models import MODELS, model_names
from .outputs import DEPTH_FORMATS, NORMAL_FORMATS
from .spec import Endpoint, OutputFormat, PipelineSpec
from .relief import DEFAULT_FOV_DEGREES, MAX_FOV_DEGREES, MIN_FOV_DEGREES, RELIEF_FORMATS
from .video import Video, decode_frames, probe_video, write_video_result

if TYPE_CHECKING:
    from .lotus_model import LotusDPipeline

log = logging.getLogger(__name__)

DEFAULT_MODEL_ID = LOTUS_MODELS[DEFAULT_MODELS["depth"]].repo_id
CHECKPOINT_FOLDER = LOTUS_FOLDER
# A note for people in the folder scripts/make_tiny_checkpoints.py writes. The server does
# not read it (it would outlive the test weights when real ones are copied over): whether
# weights are test ones is decided from the UNet's config (pipelines/checkpoints.py).
TEST_CHECKPOINT_MARKER = "TINY_TEST_CHECKPOINT.txt"
# What a normal map's values mean, as upstream's code defines it: the pipeline's [0, 1]
# output is 2n - 1 mapped back (eval.py:214, the evaluation's `pred_normal*2-1`), x, y, z in
# R, G, B (utils/visualize.py:43-48); the frame is the training targets': Hypersim's camera-
# space normals with x negated (utils/hypersim_dataset.py:74-75), turned to face the camera
# (n . p >= 0 for p = depth K^-1 (u, v, 1), hypersim_dataset.py:35-53, --align_cam_normal in
# train_scripts/train_lotus_*_normal.sh): x to the left, y up, z toward the camera.
ResampleMethod = Literal["bilinear", "bicubic", "nearest"]
# Upscaling is refused beyond max(FREE_PROCESSING_RES, MAX_UPSCALE x the photo's longer
# side): a 64x48 photo at 4096 would cost a 64x upscale and up to an hour of CPU for
# nothing the photo holds; the default 768 stays open to every photo.
FREE_PROCESSING_RES = 768
MAX_UPSCALE = 2
# The options that change the model's computation: jobs equal in these, in `model` and in
# image size share one forward pass. Seed (one generator per job) and output format do not.
BATCH_OPTIONS = ("processing_res", "output_processing_res", "resample_method", "timestep",
                 "latent")
# LotusDepth.time_limit's cost model. Seconds per processing megapixel of one job: CPU
# measured with bench/depth.py --arch sd2 (38 s for 256x192 on 2 threads, fp32); CUDA
# assumed for a T4-class card under autocast (an H200 is about ten times faster). Above
# ATTENTION_MEGAPIXELS the UNet's self-attention, quadratic in the latent's pixels,
# outweighs the rest (SD2 at 96x72 latent tokens: about a quarter of the work).
SECONDS_PER_MEGAPIXEL = {"cpu": 800.0, "cuda": 4.0}
ATTENTION_MEGAPIXELS = 1.5
SLACK = 5  # a job this many times over its estimate is stuck, not slow
WARM_UP_SECONDS = 120  # first-call kernel selection, a cold page cache
# A video's frames go through the model this many at a time (one forward pass each); the
# job checks for cancellation and reports progress between them.
VIDEO_BATCH_FRAMES = 4


def _model_names(task: str) -> tuple[str, ...]:
    """Every model of the model table (pipelines/models.py) for `task`: Lotus's, and
    another pipeline's (Depth Anything V2's), which the table routes to that pipeline."""
    return model_names(task)


class LotusRequest(ImageInput):
    """Options every Lotus job takes; `DepthRequest` and `NormalRequest` add the task's own."""

    TASK: ClassVar[str]

    processing_res: int = Field(768, ge=0, le=4096,
                                description="Longer side the model sees; 0 = native size")
    output_processing_res: bool = Field(False, description="Return the processing "
                                        "resolution instead of the input size")
    resample_method: ResampleMethod = "bilinear"
    timestep: int = Field(999, ge=0, le=999)
    seed: int = Field(42, ge=0, le=2**63 - 1, description="Seeds the VAE posterior sample "
                      "and Lotus-G's noise latent, as upstream's --seed does")
    latent: Literal["sample", "mode"] = Field(
        "sample", description="Encode by sampling the VAE posterior (the reference) or its mode")
    video: ImageData | None = Field(
        None, description="Instead of an image: a base64 mp4, mov or webm (a file in a "
        "multipart/form-data upload), at most VIDEO_MAX_SECONDS, VIDEO_MAX_FRAMES, "
        "VIDEO_MAX_SIDE and VIDEO_MAX_BYTES; the result is a zip of the colourised mp4 and "
        "an .npz of the raw frames. Async endpoints only")
    video_url: str | None = Field(None, description="http(s) URL of such a video")

    @model_validator(mode="after")
    def _one_source(self):
        """Replaces ImageSource's check (same name): a video is a source too."""
        sources = [self.image, self.image_base64, self.image_url, self.video, self.video_url]
        if sum(source is not None for source in sources) != 1:
            raise ValueError("send exactly one of 'image' (base64 in JSON, a file in a form "
                             "upload), 'image_url', 'video' or 'video_url'")
        return self

    @property
    def is_video(self) -> bool:
        return self.video is not None or self.video_url is not None

    @property
    def lotus_model(self) -> LotusModel:
        return LOTUS_MODELS[self.model]

    def load(self, limits: ImageLimits) -> JobInputs:
        """The image, with processing_res checked against it at submission, so a request
        that would upscale far beyond the photo is a 400, never a queued job; or the video,
        refused from its metadata before any frame is decoded."""
        if self.is_video:
            return self._load_video(limits)
        inputs = super().load(limits)
        options, image = inputs.options, inputs.image
        limit = max_processing_res(image.size)
        if options.processing_res > limit:
            raise InvalidInput(
                f"processing_res {options.processing_res} would upscale this "
                f"{image.width}x{image.height} image far beyond its pixels; at most "
                f"max({FREE_PROCESSING_RES}, {MAX_UPSCALE} x its longer side) = {limit} "
                "is served (0 = its native size)")
        return inputs

    def _load_video(self, limits: ImageLimits) -> JobInputs:
        if getattr(self, "output", None) in ("glb", "ply"):
            raise InvalidInput(f"output {self.output} is a photo's relief; a video's result is "
                               "a zip of the coloured maps as mp4 and the raw frames as npz")
        if self.video_url is None:
            try:
                data = image_data(self.video)
            except InvalidInput as exc:  # its messages name the image field
                raise InvalidInput(str(exc).replace("image", "video", 1)) from None
        else:
            data = fetch_url(self.video_url, max_bytes=min(limits.url_max_bytes,
                                                           limits.video.max_bytes),
                             timeout=limits.url_timeout_seconds,
                             allow_private=limits.allow_private_urls, what="video_url")
        video = probe_video(data, limits.video)
        limit = max_processing_res(video.size)
        if self.processing_res > limit:
            raise InvalidInput(f"processing_res {self.processing_res} would upscale this "
                               f"{video.width}x{video.height} video; at most {limit} is served")
        options = self.without_image().model_copy(update={"video": None, "video_url": None})
        return JobInputs(options, video, data)


class DepthRequest(LotusRequest):
    """Options of a depth job (`POST /depth`, and the serverless worker's input)."""

    TASK: ClassVar[str] = "depth"

    model: Literal[_model_names("depth")] = Field(  # type: ignore[valid-type]
        DEFAULT_MODELS["depth"], description="Which depth checkpoint (/health lists the "
        "ones served): Lotus's depth-*-disparity predict disparity, -g- models are Lotus-G "
        "(generative), -d- Lotus-D (regression); depth-anything-v2-small predicts "
        "affine-invariant disparity, depth-anything-v2-metric-* depth in metres")
    output: Literal["png", "png16", "npy", "color", "glb", "ply"] = Field(
        "png", description="png, png16: the map stretched min..max to 8 or 16 bits; npy: the "
        "raw float32 prediction; color: Spectral, near in red; glb: a relief mesh textured "
        "with the photo; ply: a point cloud coloured from the photo (glb, ply: relief, not "
        "metric depth; the answer's `geometry` says how it is built)")
    fov_degrees: float = Field(DEFAULT_FOV_DEGREES, ge=MIN_FOV_DEGREES, le=MAX_FOV_DEGREES,
                               description="glb, ply: the assumed field of view across the "
                               "photo's longer side (the photo does not say)")
    disparity: bool | None = Field(None, description="What the model predicts: true for "
                                   "the *-disparity models (affine-invariant disparity), false "
                                   "for the v1-0 ones (affine-invariant depth); if given, it "
                                   "must match the model")
    normal_model: Literal[_model_names("normal")] | None = Field(  # type: ignore[valid-type]
        None, description="glb, ply: light the relief with this normal model's prediction "
        "of the same photo (its vertex normals; /health lists the models served), so a "
        "viewer shades the surface as Lotus sees it; the job runs both models. Default: "
        "normals from the relief's triangles (glb), none (ply)")

    @model_validator(mode="after")
    def _normals_light_a_relief(self):
        if self.normal_model is not None and self.is_video:
            raise ValueError("normal_model lights a photo's relief (output glb or ply); a "
                             "video's result is a zip of its depth maps as mp4 and npz; for "
                             "a video's normals, POST /normal")
        if self.normal_model is not None and self.output not in RELIEF_FORMATS:
            raise ValueError(f"normal_model lights a relief: it needs output glb or ply, not "
                             f"{self.output}; for the normal map itself, POST /normal")
        return self

    @model_validator(mode="after")
    def _disparity_of_the_model(self):
        row = MODELS[self.model]
        if self.disparity is not None and self.disparity != row.disparity:
            if row.metric:
                raise ValueError(f"disparity: model {self.model} predicts depth in metres, "
                                 "not disparity")
            raise ValueError(f"disparity: model {self.model} predicts affine-invariant "
                             f"{'disparity' if row.disparity else 'depth'}, not "
                             f"{'disparity' if self.disparity else 'depth'}; metric depth "
                             "is not available from this model")
        return self


class NormalRequest(LotusRequest):
    """Options of a surface-normal job (`POST /normal`, the serverless `task: "normal"`)."""

    TASK: ClassVar[str] = "normal"

    model: Literal[_model_names("normal")] = Field(  # type: ignore[valid-type]
        DEFAULT_MODELS["normal"], description="Which of upstream's normal checkpoints "
        "(/health lists the ones served): -g- is Lotus-G (generative), -d- Lotus-D")
    output: Literal["png", "png16", "npy"] = Field(
        "png", description="png: 8-bit RGB as upstream's infer.py writes it; png16: 16-bit "
        "RGB; npy: the raw float32 height x width x 3 prediction in [0, 1]")


def max_processing_res(size: tuple[int, int]) -> int:
    """The largest processing_res served for a photo of `size` (width, height)."""
    return max(FREE_PROCESSING_RES, MAX_UPSCALE * max(size))


def resized_size(height: int, width: int, max_edge: int) -> tuple[int, int]:
    """(height, width) scaled by min(max_edge/W, max_edge/H), truncated, at least 1 pixel."""
    factor = min(max_edge / width, max_edge / height)
    return max(1, int(height * factor)), max(1, int(width * factor))


def resolve_checkpoint(checkpoints_dir: Path, model_id: str | None = None) -> Path:
    """The local folder if present, else `MODEL_ID` from the Hugging Face cache.

    With HF_HUB_OFFLINE=1 (as in the image) the cache is read and nothing is downloaded.
    """
    local = Path(checkpoints_dir) / CHECKPOINT_FOLDER
    if local.is_dir() and not model_id:
        return local
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(model_id or DEFAULT_MODEL_ID,
                                  allow_patterns=["*.json", "*.txt", "*.safetensors"]))


class LotusDepth:
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

        from .lotus_model import PIPELINES

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
        JOB_TIMEOUT_SECONDS: SECONDS_PER_MEGAPIXEL of the processing size, the UNet's
        self-attention growing with its square, times SLACK, plus warm-up (Lotus-G's one UNet
        call costs as Lotus-D's: only its first convolution is wider). Needs no model."""
        width, height = image.size
        if options.processing_res > 0:
            height, width = resized_size(height, width, options.processing_res)
        megapixels = width * height / 1e6
        rate = SECONDS_PER_MEGAPIXEL[self.device_kind]
        work = rate * megapixels * (1 + megapixels / ATTENTION_MEGAPIXELS)
        passes = image.frames if isinstance(image, Video) else 1
        if getattr(options, "normal_model", None):  # the relief's normals: a second model
            passes *= 2
        return WARM_UP_SECONDS + SLACK * work * passes

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


def _lotus_batch_limit(settings, device) -> int:
    from workers.devices import depth_batch

    return depth_batch(settings, device)


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
    factory=lambda settings: LotusDepth(settings.checkpoints_dir, settings.model_id,
                                        half_precision=settings.lotus_half_precision),
    checkpoint_present=lambda settings: LotusDepth.checkpoint_present(
        settings.checkpoints_dir, settings.model_id),
    outputs=tuple(OutputFormat(f"{task} {name}", suffix, media_type, download_name)
                  for task, formats in (("depth", {**DEPTH_FORMATS, **RELIEF_FORMATS}),
                                        ("normal", NORMAL_FORMATS))
                  for name, (_, suffix, media_type, download_name) in formats.items())
    + tuple(OutputFormat(f"{task} video", ".zip", "application/zip", f"{task}_video.zip",
                         zip_member=".mp4") for task in ("depth", "normal")),
    placement="gpu",
    batch_limit=_lotus_batch_limit,
    memory="a few GB beside SAM 3D Objects' admission figures",
    models=tuple(LOTUS_MODELS),
)
