"""Lotus-D depth (`jingheya/lotus-depth-d-v2-0-disparity`) on stock diffusers parts.

Lotus-D is a one-step regressor built from Stable Diffusion 2: the VAE encodes the photo,
one UNet call at t=999 (conditioned on an empty prompt and a task embedding) predicts the
annotation latent, and the VAE decodes it. `LotusDepthPipeline` is upstream's
`LotusDPipeline.__call__` plus `infer.py`'s depth step (EnVision-Research/Lotus at b737e12:
pipeline.py:1016-1164, infer.py:163-210, utils/image_utils.py:68-160), diffusers-style
(`from_pretrained`, `__call__`, in `lotus_model.py`: torch is imported only where the model
runs); `LotusDepth` serves it on the job queue. Line numbers below
are upstream's; tests hold the output to a reference that follows those lines.
"""

from __future__ import annotations

import logging
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Hashable, Literal, Sequence

import numpy as np
from PIL import Image
from pydantic import Field, field_validator

from .base import InvalidInput, PipelineError, Progress, Result, describe_failure
from .images import ImageInput, ImageLimits, JobInputs
from .outputs import DEPTH_FORMATS, atomic_write

if TYPE_CHECKING:
    from .lotus_model import LotusDepthPipeline

log = logging.getLogger(__name__)

DEFAULT_MODEL_ID = "jingheya/lotus-depth-d-v2-0-disparity"
CHECKPOINT_FOLDER = "lotus-depth-d-v2-0-disparity"
# A note for people in the folder scripts/make_tiny_checkpoints.py writes. The server does
# not read it (it would outlive the test weights when real ones are copied over): whether
# weights are test ones is decided from the UNet's config (pipelines/checkpoints.py).
TEST_CHECKPOINT_MARKER = "TINY_TEST_CHECKPOINT.txt"
ResampleMethod = Literal["bilinear", "bicubic", "nearest"]
# Upscaling is refused beyond max(FREE_PROCESSING_RES, MAX_UPSCALE x the photo's longer
# side): a 64x48 photo at 4096 would cost a 64x upscale and up to an hour of CPU for
# nothing the photo holds; the default 768 stays open to every photo.
FREE_PROCESSING_RES = 768
MAX_UPSCALE = 2
# The options that change the model's computation: jobs equal in these and in image size
# share one forward pass. Seed (one generator per job) and output format do not.
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


class DepthRequest(ImageInput):
    """Options of a depth job (`POST /depth`, and the serverless worker's input)."""

    processing_res: int = Field(768, ge=0, le=4096,
                                description="Longer side the model sees; 0 = native size")
    output_processing_res: bool = Field(False, description="Return the processing "
                                        "resolution instead of the input size")
    resample_method: ResampleMethod = "bilinear"
    timestep: int = Field(999, ge=0, le=999)
    seed: int = Field(42, ge=0, le=2**63 - 1)
    latent: Literal["sample", "mode"] = Field(
        "sample", description="Encode by sampling the VAE posterior (the reference) or its mode")
    output: Literal["png", "png16", "npy", "color"] = "png"
    disparity: bool = Field(True, description="Lotus-D predicts disparity; only true is served")

    @field_validator("disparity")
    @classmethod
    def _disparity_only(cls, value: bool) -> bool:
        if not value:
            raise ValueError("this checkpoint predicts affine-invariant disparity; "
                             "metric or relative depth is not available")
        return value

    def load(self, limits: ImageLimits) -> JobInputs:
        """The image, with processing_res checked against it at submission, so a request
        that would upscale far beyond the photo is a 400, never a queued job."""
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
    """The queue's view of Lotus-D: one job = one image -> one depth file."""

    name: ClassVar[str] = "lotus"
    options_model: ClassVar[type] = DepthRequest
    oom_advice: ClassVar[str] = "Try a smaller processing_res."

    def __init__(self, checkpoints_dir: Path, model_id: str | None = None,
                 device_kind: str = "cpu"):
        self.checkpoints_dir, self.model_id = Path(checkpoints_dir), model_id
        self.device_kind = device_kind  # where jobs run: "cuda" or "cpu" (time_limit)
        self.model: "LotusDepthPipeline | None" = None

    @staticmethod
    def checkpoint_present(checkpoints_dir: Path, model_id: str | None = None) -> bool:
        return bool(model_id) or (Path(checkpoints_dir) / CHECKPOINT_FOLDER).is_dir()

    @cached_property
    def notice(self) -> str | None:
        """What a user must know before trusting a result (health, log, web page): read
        from the checkpoint once, as it was when the server started (what it serves)."""
        from .checkpoints import is_test_checkpoint

        if self.model_id or not is_test_checkpoint(self.checkpoints_dir / CHECKPOINT_FOLDER):
            return None
        return ("Lotus-D runs the tiny random test checkpoint (scripts/make_tiny_checkpoints.py): "
                f"its depth maps are noise. Put the real {CHECKPOINT_FOLDER} checkpoint in "
                "CHECKPOINTS_DIR for real depth maps.")

    def check(self, options: DepthRequest) -> None:
        """Nothing to refuse before the image is known (DepthRequest.load checks
        processing_res against it)."""

    def load(self) -> None:
        import torch

        from .lotus_model import LotusDepthPipeline

        self.device_kind = "cuda" if torch.cuda.is_available() else "cpu"
        if self.notice:
            log.warning(self.notice)
        path = resolve_checkpoint(self.checkpoints_dir, self.model_id)
        self.model = LotusDepthPipeline.from_pretrained(path, device=self.device_kind)

    def time_limit(self, options: DepthRequest, image: Image.Image) -> float | None:
        """Seconds after which this job is surely stuck, for the queue to cap
        JOB_TIMEOUT_SECONDS: SECONDS_PER_MEGAPIXEL of the processing size, the UNet's
        self-attention growing with its square, times SLACK, plus warm-up. Needs no model."""
        width, height = image.size
        if options.processing_res > 0:
            height, width = resized_size(height, width, options.processing_res)
        megapixels = width * height / 1e6
        rate = SECONDS_PER_MEGAPIXEL[self.device_kind]
        work = rate * megapixels * (1 + megapixels / ATTENTION_MEGAPIXELS)
        return WARM_UP_SECONDS + SLACK * work

    @staticmethod
    def batch_key(options: DepthRequest, image: Image.Image) -> Hashable:
        """Jobs with equal keys may share one forward pass (`run_batch`): the image size and
        every option that changes the computation. Needs no model."""
        return (image.size, *(getattr(options, name) for name in BATCH_OPTIONS))

    def predict(self, options: DepthRequest, image: Image.Image,
                progress: Progress | None = None) -> np.ndarray:
        """The raw disparity for one image, at the size the options ask for."""
        return self._predict([(options, image)], progress)[0]

    def run(self, options: DepthRequest, image: Image.Image, output_stem: Path,
            progress: Progress) -> Result:
        return _raised(self.run_batch([(options, image, output_stem)], progress))[0]

    def run_many(self, options: DepthRequest, images: Sequence[Image.Image],
                 output_stems: Sequence[Path], progress: Progress) -> list[Result]:
        """One result file per image, in order (the serverless worker's `images`); each
        image equals a request of its own with these options."""
        return _raised(self.run_batch([(options, image, stem) for image, stem
                                       in zip(images, output_stems)], progress))

    def run_batch(self, jobs: Sequence[tuple[DepthRequest, Image.Image, Path]],
                  progress: Progress) -> list[Result | PipelineError]:
        """Each job's result, in order: one forward pass per batch key (one for jobs of
        equal keys), each job with its own seed, output format and file. A job whose output
        is not finite or cannot be written gets a PipelineError in its place; the others
        complete. A failing forward pass (out of memory) raises for the whole batch."""
        disparities = self._predict([(options, image) for options, image, _ in jobs], progress)
        progress("writing", 0.9)
        return [self._finish(options, disparity, stem)
                for (options, _, stem), disparity in zip(jobs, disparities)]

    def _predict(self, jobs: Sequence[tuple[DepthRequest, Image.Image]],
                 progress: Progress | None) -> list[np.ndarray]:
        """One raw disparity per (options, image), in order; one forward pass per key."""
        if self.model is None:
            raise PipelineError("Lotus-D is not loaded", status=503)
        groups: dict[Hashable, list[int]] = {}
        for index, (options, image) in enumerate(jobs):
            groups.setdefault(self.batch_key(options, image), []).append(index)
        disparities: list[np.ndarray] = [np.empty(0)] * len(jobs)
        for indices in groups.values():
            options = jobs[indices[0]][0]
            # Upstream samples the posterior from the global generator after seed_all(seed)
            # (infer.py:105-106, pipeline.py:1108): a fresh generator on the model's device
            # with the same seed draws the same numbers, one per job, so each job equals
            # upstream's run of its image alone.
            generators = self.model.generators([jobs[i][0].seed for i in indices])
            batch = self.model([jobs[i][1] for i in indices],
                               processing_res=options.processing_res,
                               match_input_res=not options.output_processing_res,
                               resample_method=options.resample_method,
                               timestep=options.timestep, generator=generators,
                               latent=options.latent, on_stage=progress)
            for index, disparity in zip(indices, batch):
                disparities[index] = disparity
        return disparities

    @classmethod
    def _finish(cls, options: DepthRequest, disparity: np.ndarray,
                output_stem: Path) -> Result | PipelineError:
        if not np.isfinite(disparity).all():
            return PipelineError("the model produced non-finite values", status=500)
        try:
            return cls._write(options, disparity, output_stem)
        except OSError as exc:  # a full or read-only disk fails this job, not its batch
            return describe_failure(exc)

    @staticmethod
    def _write(options: DepthRequest, disparity: np.ndarray, output_stem: Path) -> Result:
        encode, suffix, media_type, download_name = DEPTH_FORMATS[options.output]
        data = encode(disparity)
        path = atomic_write(Path(f"{output_stem}{suffix}"), lambda tmp: tmp.write_bytes(data))
        info = {"min": float(disparity.min()), "max": float(disparity.max()),
                "width": int(disparity.shape[1]), "height": int(disparity.shape[0])}
        return Result(path=path, media_type=media_type, download_name=download_name, info=info)


def _raised(results: list[Result | PipelineError]) -> list[Result]:
    """The results, or the first job's error raised (`run` and `run_many` answer or fail)."""
    for result in results:
        if isinstance(result, PipelineError):
            raise result
    return results
