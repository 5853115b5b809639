"""Server settings, read once from the environment.

Every knob of the guide (`PORT`, `MAX_CONCURRENT`, `MAX_QUEUE_SIZE`) and of ours lives
here, validated by pydantic, so a bad value stops the server at start-up with one line
naming the variable instead of failing on the first request.
"""

from __future__ import annotations

import base64
import binascii
import logging
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipelines.images import ImageLimits
from pipelines.video import VideoLimits

log = logging.getLogger(__name__)

# A 4096x4096 RGB PNG of noise is about 50 MB; base64 adds a third: 100 MiB covers it.
DEFAULT_MAX_CONTENT_LENGTH = 100 * 1024 * 1024


class SettingsError(ValueError):
    """A setting from the environment is invalid; the message is one line."""


class Settings(BaseSettings):
    # A blank variable means the default: docker-compose.yml passes every setting through,
    # blank when neither .env nor the shell sets it (.env.example lists them all).
    model_config = SettingsConfigDict(frozen=True, extra="ignore", env_ignore_empty=True)

    port: int = Field(8000, ge=1, le=65535)
    # The address the HTTP server listens on: this machine only unless told otherwise (the
    # image sets HOST=0.0.0.0: a container's loopback is unreachable from outside it).
    host: str = Field("127.0.0.1", pattern=r"^[0-9A-Za-z.:\-]+$")
    max_concurrent: int = Field(1, ge=1, le=64)
    max_queue_size: int = Field(10, ge=1, le=100_000)
    checkpoints_dir: Path = Path("checkpoints")
    output_dir: Path = Path("outputs")
    result_ttl_seconds: float = Field(3600, gt=0)
    sync_timeout_seconds: float = Field(600, gt=0)
    max_content_length: int = Field(DEFAULT_MAX_CONTENT_LENGTH, ge=1024)
    # Which pipelines to load: comma-separated names; empty means every one whose
    # checkpoint is present.
    pipelines: str = ""
    # Where the image keeps the SAM 3D Objects source (its notebook/inference.py).
    sam3d_source_dir: Path = Path("/opt/sam-3d-objects")
    # GPU memory (GiB) assumed for SAM 3D's card when admitting its jobs; unset = read from
    # the GPU. The other model workers' footprints on that card are taken off it
    # (workers/pool.py). For shared or MIG GPUs, and for tests of the admission rules.
    sam3d_vram_gib: float | None = Field(None, ge=0)
    # The models run in a child process of their own (MODEL_PROCESS=0: in the server's);
    # a job running longer than JOB_TIMEOUT_SECONDS is stopped and the models reload.
    model_process: bool = True
    job_timeout_seconds: float = Field(3600, gt=0)
    # The devices model workers run on: "" = every visible GPU (CUDA_VISIBLE_DEVICES
    # honoured), else indices such as "0,2"; "cpu" entries add CPU workers (no GPU: one).
    gpus: str = Field("", pattern=r"^\s*((\d+|cpu)\s*(,\s*(\d+|cpu)\s*)*)?$")
    # Depth jobs a Lotus-D worker runs as one forward pass (unset: 4 on a GPU, 1 on CPU).
    depth_batch: int | None = Field(None, ge=1, le=64)
    # Below this much free space in OUTPUT_DIR no job is started or accepted (507).
    min_free_disk_mb: int = Field(64, ge=0)
    # SAM3D_COMPILE=1: upstream's compile=True (torch.compile and three warm-up runs at
    # load): minutes more at start-up for faster jobs.
    sam3d_compile: bool = False
    # SAM3D_OFFLOAD: low-memory mode, only the running stage's sub-models on the GPU (auto:
    # on when the GPU is smaller than the whole model needs). DEPLOY.md, "Smaller GPUs".
    sam3d_offload: Literal["auto", "on", "off"] = "auto"
    # LOTUS_HALF_PRECISION: on CUDA, Lotus's weights in fp16, as upstream's infer.py
    # --half_precision loads them (half the weights' memory, ~2.4 GiB instead of ~4.8); off:
    # fp32 weights under fp16 autocast, upstream's default. The CPU always runs fp32.
    lotus_half_precision: bool = True
    # Tests only, a stand-in for CUDA's figures: "lotus=5.2,segment=0" makes a model worker
    # on a CPU device report that GPU footprint (GiB) as if measured at load, so SAM 3D's
    # admission (SAM3D_VRAM_GIB minus the other workers' footprints) runs its real path.
    stand_in_gpu_footprint_gib: str = Field(
        "", pattern=r"^\s*([a-z0-9]+=\d+(\.\d+)?\s*(,\s*[a-z0-9]+=\d+(\.\d+)?\s*)*)?$")
    # Lotus-D from the Hugging Face cache (HF_HOME) instead of CHECKPOINTS_DIR.
    model_id: str | None = None
    # Optional API key; LOTUS_API_KEY (the serverless plan's name) is read as a fallback.
    api_key: SecretStr | None = None
    lotus_api_key: SecretStr | None = None
    # Signs webhooks (Standard Webhooks: whsec_ + base64); without it `webhook` is refused.
    webhook_secret: SecretStr | None = None
    # Lets image_url reach private and loopback addresses: local development only.
    allow_private_urls: bool = False
    # Serverless worker: results whose base64 would pass this are returned by path or URL
    # (RunPod's payload limits: /run 10 MB, /runsync 20 MB, with room for the rest).
    max_inline_bytes: int = Field(7 * 1024 * 1024, ge=0)
    max_image_side: int = Field(4096, ge=1)
    url_max_bytes: int = Field(DEFAULT_MAX_CONTENT_LENGTH, ge=1024)
    url_timeout_seconds: float = Field(10, gt=0)
    # A video sent to /depth or /normal: refused from its container's metadata beyond these.
    video_max_seconds: float = Field(10, gt=0)
    video_max_frames: int = Field(120, ge=1)
    video_max_side: int = Field(1280, ge=1)
    video_max_bytes: int = Field(50 * 1024 * 1024, ge=1024)

    @field_validator("pipelines")
    @classmethod
    def _known_pipelines(cls, value: str) -> str:
        from pipelines.table import auto_started  # the model table: what PIPELINES may name

        known = auto_started()
        unknown = {name.strip() for name in value.split(",") if name.strip()} - set(known)
        if unknown:
            raise ValueError(f"unknown pipeline {', '.join(sorted(unknown))}; "
                             f"known: {', '.join(known)}")
        return value

    @field_validator("webhook_secret")
    @classmethod
    def _standard_webhooks_secret(cls, value: SecretStr | None) -> SecretStr | None:
        """Standard Webhooks' form: `whsec_` + base64 of 24 to 64 random bytes."""
        if value is None:
            return value
        text = value.get_secret_value().removeprefix("whsec_")
        try:
            key = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("must be whsec_ followed by base64") from None
        if not 24 <= len(key) <= 64:
            raise ValueError("must decode to 24 to 64 bytes")
        return value

    @property
    def bind(self) -> str:
        """HOST:PORT as gunicorn's `bind` and a URL write it (an IPv6 address bracketed)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @field_validator("api_key", "lotus_api_key", "webhook_secret", mode="before")
    @classmethod
    def _trimmed_and_blank_is_unset(cls, value, info: ValidationInfo):
        """A key pasted with a trailing newline would lock every client out silently."""
        if not isinstance(value, str):
            return value
        if value != value.strip():
            log.warning("%s has leading or trailing whitespace: it is trimmed",
                        info.field_name.upper())
        return value.strip() or None

    @property
    def required_api_key(self) -> str | None:
        key = self.api_key or self.lotus_api_key
        return key.get_secret_value() if key else None

    @property
    def image_limits(self) -> ImageLimits:
        return ImageLimits(max_side=self.max_image_side, url_max_bytes=self.url_max_bytes,
                           url_timeout_seconds=self.url_timeout_seconds,
                           allow_private_urls=self.allow_private_urls,
                           video=VideoLimits(self.video_max_seconds, self.video_max_frames,
                                             self.video_max_side, self.video_max_bytes))

    @property
    def stand_in_footprints(self) -> dict[str, float]:
        """STAND_IN_GPU_FOOTPRINT_GIB by pipeline name (tests only)."""
        pairs = (entry.split("=") for entry in self.stand_in_gpu_footprint_gib.split(",")
                 if entry.strip())
        return {name.strip(): float(gib) for name, gib in pairs}

    @property
    def pipeline_names(self) -> list[str]:
        return [name.strip() for name in self.pipelines.split(",") if name.strip()]


def load_settings(**overrides) -> Settings:
    """Read the environment (overrides win) or raise SettingsError with a one-line message."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        err = exc.errors()[0]
        name = str(err["loc"][0]).upper() if err["loc"] else "settings"
        raise SettingsError(f"invalid {name}={err.get('input')!r}: {err['msg']}") from None
