"""What a Lotus job asks for: `DepthRequest` (`POST /depth`, RunPod's `task: depth`) and
`NormalRequest` (`POST /normal`, `task: normal`), both `LotusRequest`s: a photo or a video and
the options upstream's infer.py takes (processing resolution, timestep, seed, ...). Checked at
submission, before the job is queued: a model name from the model table (pipelines/models.py:
Lotus's six and Depth Anything V2's three, which share `POST /depth`), a processing_res that
does not upscale far beyond the photo, a video refused from its metadata (pipelines/video.py).

The previous release's job journal names `pipelines.lotus:DepthRequest` and
`pipelines.lotus:NormalRequest`; the package (pipelines/lotus/__init__.py) exports both, so
those rows and this module's own (`pipelines.lotus.request:DepthRequest`) both restore.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from ..errors import InvalidInput
from ..fetch import fetch_url
from ..images import ImageData, ImageInput, ImageLimits, JobInputs, image_data
from ..models import MODELS, model_names
from ..relief import DEFAULT_FOV_DEGREES, MAX_FOV_DEGREES, MIN_FOV_DEGREES, RELIEF_FORMATS
from ..video import probe_video
from .catalog import DEFAULT_MODELS, LOTUS_MODELS, LotusModel

ResampleMethod = Literal["bilinear", "bicubic", "nearest"]
# Upscaling is refused beyond max(FREE_PROCESSING_RES, MAX_UPSCALE x the photo's longer
# side): a 64x48 photo at 4096 would cost a 64x upscale and up to an hour of CPU for
# nothing the photo holds; the default 768 stays open to every photo.
FREE_PROCESSING_RES = 768
MAX_UPSCALE = 2


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

    model: Literal[model_names("depth")] = Field(  # type: ignore[valid-type]
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
    normal_model: Literal[model_names("normal")] | None = Field(  # type: ignore[valid-type]
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

    model: Literal[model_names("normal")] = Field(  # type: ignore[valid-type]
        DEFAULT_MODELS["normal"], description="Which of upstream's normal checkpoints "
        "(/health lists the ones served): -g- is Lotus-G (generative), -d- Lotus-D")
    output: Literal["png", "png16", "npy"] = Field(
        "png", description="png: 8-bit RGB as upstream's infer.py writes it; png16: 16-bit "
        "RGB; npy: the raw float32 height x width x 3 prediction in [0, 1]")


def max_processing_res(size: tuple[int, int]) -> int:
    """The largest processing_res served for a photo of `size` (width, height)."""
    return max(FREE_PROCESSING_RES, MAX_UPSCALE * max(size))
