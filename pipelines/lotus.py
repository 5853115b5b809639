"""Lotus-D depth (`jingheya/lotus-depth-d-v2-0-disparity`) on stock diffusers parts.

Lotus-D is a one-step regressor built from Stable Diffusion 2: the VAE encodes the photo,
one UNet call at t=999 (conditioned on an empty prompt and a task embedding) predicts the
annotation latent, and the VAE decodes it. `LotusDepthPipeline` is that computation,
diffusers-style (`from_pretrained`, `__call__`); `LotusDepth` serves it on the job queue.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable, ClassVar, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel
from PIL import Image
from pydantic import Field, field_validator
from transformers import CLIPTextModel, CLIPTokenizer

from .base import PipelineError, Progress, Result
from .device import best_device
from .images import ImageInput
from .outputs import DEPTH_FORMATS, atomic_write

log = logging.getLogger(__name__)

DEFAULT_MODEL_ID = "jingheya/lotus-depth-d-v2-0-disparity"
CHECKPOINT_FOLDER = "lotus-depth-d-v2-0-disparity"
PIPELINE_CLASS_NAMES = ("DirectRegressionPipeline", "LotusDPipeline")
REQUIRED_PARTS = ("model_index.json", "unet", "vae", "text_encoder", "tokenizer")
ResampleMethod = Literal["bilinear", "bicubic", "nearest"]


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


class LotusDepthPipeline:
    """Photo(s) in, affine-invariant disparity (larger = nearer, in [0, 1]) out."""

    def __init__(self, unet: UNet2DConditionModel, vae: AutoencoderKL,
                 text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer):
        self.unet, self.vae = unet.eval(), vae.eval()
        self.device, self.dtype = unet.device, unet.dtype
        self.vae_scale = 2 ** (len(vae.config.block_out_channels) - 1)
        # The UNet halves the latent once per down block but the last.
        self.size_multiple = self.vae_scale * 2 ** (len(unet.config.block_out_channels) - 1)
        with torch.inference_mode():
            ids = tokenizer("", padding="do_not_pad", return_tensors="pt").input_ids
            self.prompt_embeds = text_encoder(ids.to(text_encoder.device))[0].to(self.dtype)
        task = torch.tensor([[1.0, 0.0]])
        self.task_emb = torch.cat([torch.sin(task), torch.cos(task)], dim=-1).to(
            self.device, self.dtype)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "cpu",
                        dtype: torch.dtype = torch.float32) -> "LotusDepthPipeline":
        path = Path(path)
        check_checkpoint(path)
        unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", torch_dtype=dtype)
        vae = AutoencoderKL.from_pretrained(path, subfolder="vae", torch_dtype=dtype)
        text_encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder")
        tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer")
        _enable_memory_efficient_attention(unet)
        return cls(unet.to(device), vae.to(device), text_encoder.to(device), tokenizer)

    @torch.inference_mode()
    def __call__(self, images: Sequence[Image.Image], *, processing_res: int = 768,
                 match_input_res: bool = True, resample_method: ResampleMethod = "bilinear",
                 timestep: int = 999, generator: torch.Generator | None = None,
                 latent: Literal["sample", "mode"] = "sample",
                 on_stage: Callable[[str, float], None] | None = None) -> np.ndarray:
        """Images of one size -> float32 array (batch, height, width)."""
        stage = on_stage or (lambda name, fraction: None)
        pixels = torch.stack([_to_tensor(image) for image in images])  # [-1, 1]
        height, width = pixels.shape[-2:]
        pixels = resize_longer_side(pixels, processing_res, resample_method)
        proc_h, proc_w = pixels.shape[-2:]
        pixels = _pad_to_multiple(pixels, self.size_multiple).to(self.device, self.dtype)

        stage("encoding", 0.1)
        posterior = self.vae.encode(pixels).latent_dist
        rgb_latent = posterior.sample(generator) if latent == "sample" else posterior.mode()
        rgb_latent = rgb_latent * self.vae.config.scaling_factor

        stage("predicting", 0.4)
        batch = rgb_latent.shape[0]
        prediction = self.unet(
            rgb_latent, timestep,
            encoder_hidden_states=self.prompt_embeds.expand(batch, -1, -1),
            class_labels=self.task_emb.expand(batch, -1)).sample

        stage("decoding", 0.7)
        decoded = self.vae.decode(prediction / self.vae.config.scaling_factor).sample
        disparity = ((decoded.float().clamp(-1, 1) + 1) / 2).mean(dim=1, keepdim=True)
        disparity = disparity[..., :proc_h, :proc_w]
        if match_input_res and (proc_h, proc_w) != (height, width):
            disparity = F.interpolate(disparity, size=(height, width), mode="nearest-exact")
        return disparity[:, 0].cpu().numpy().astype(np.float32)


def check_checkpoint(path: Path) -> None:
    """Fail at load, naming what is missing, rather than deep inside diffusers."""
    if not path.is_dir():
        raise FileNotFoundError(f"Lotus checkpoint folder {path} does not exist")
    missing = [part for part in REQUIRED_PARTS if not (path / part).exists()]
    if missing:
        raise FileNotFoundError(f"Lotus checkpoint {path} is missing: {', '.join(missing)}")
    class_name = json.loads((path / "model_index.json").read_text()).get("_class_name")
    if class_name not in PIPELINE_CLASS_NAMES:
        raise ValueError(f"{path} holds a {class_name}, not a Lotus-D checkpoint")


def resize_longer_side(pixels: torch.Tensor, target: int, method: ResampleMethod) -> torch.Tensor:
    """Antialiased resize so the longer side equals `target` (0 keeps the size)."""
    height, width = pixels.shape[-2:]
    if target <= 0 or max(height, width) == target:
        return pixels
    scale = target / max(height, width)
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    antialias = method in ("bilinear", "bicubic")
    return F.interpolate(pixels, size=size, mode=method, antialias=antialias,
                         **({"align_corners": False} if antialias else {}))


def _to_tensor(image: Image.Image) -> torch.Tensor:
    array = np.asarray(image.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1) / 127.5 - 1.0


def _pad_to_multiple(pixels: torch.Tensor, multiple: int) -> torch.Tensor:
    """Edge-pad right and bottom so every VAE and UNet level divides evenly."""
    height, width = pixels.shape[-2:]
    pad_h, pad_w = -height % multiple, -width % multiple
    if not (pad_h or pad_w):
        return pixels
    return F.pad(pixels, (0, pad_w, 0, pad_h), mode="replicate")


def _enable_memory_efficient_attention(unet: UNet2DConditionModel) -> None:
    """PyTorch SDPA is diffusers' default; xformers only when it is installed and on CUDA."""
    if unet.device.type != "cuda":
        return
    try:
        unet.enable_xformers_memory_efficient_attention()
        log.info("xformers attention enabled")
    except Exception as exc:  # not installed, or no kernel for this GPU
        log.info("xformers not enabled (%s); using PyTorch SDPA", exc)


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

    def __init__(self, checkpoints_dir: Path, model_id: str | None = None):
        self.checkpoints_dir, self.model_id = Path(checkpoints_dir), model_id
        self.model: LotusDepthPipeline | None = None

    @staticmethod
    def checkpoint_present(checkpoints_dir: Path, model_id: str | None = None) -> bool:
        return bool(model_id) or (Path(checkpoints_dir) / CHECKPOINT_FOLDER).is_dir()

    def check(self, options: DepthRequest) -> None:
        """Every valid depth request fits: nothing to refuse up front."""

    def load(self) -> None:
        device, dtype = best_device()
        path = resolve_checkpoint(self.checkpoints_dir, self.model_id)
        self.model = LotusDepthPipeline.from_pretrained(path, device=device, dtype=dtype)

    def predict(self, options: DepthRequest, image: Image.Image,
                progress: Progress | None = None) -> np.ndarray:
        """The raw disparity for one image, at the size the options ask for."""
        if self.model is None:
            raise PipelineError("Lotus-D is not loaded", status=503)
        generator = torch.Generator("cpu").manual_seed(options.seed)
        return self.model([image], processing_res=options.processing_res,
                          match_input_res=not options.output_processing_res,
                          resample_method=options.resample_method, timestep=options.timestep,
                          generator=generator, latent=options.latent, on_stage=progress)[0]

    def run(self, options: DepthRequest, image: Image.Image, output_stem: Path,
            progress: Progress) -> Result:
        disparity = self.predict(options, image, progress)
        if not np.isfinite(disparity).all():
            raise PipelineError("the model produced non-finite values", status=500)
        progress("writing", 0.9)
        encode, suffix, media_type, download_name = DEPTH_FORMATS[options.output]
        data = encode(disparity)
        path = atomic_write(Path(f"{output_stem}{suffix}"), lambda tmp: tmp.write_bytes(data))
        info = {"min": float(disparity.min()), "max": float(disparity.max()),
                "width": int(disparity.shape[1]), "height": int(disparity.shape[0])}
        return Result(path=path, media_type=media_type, download_name=download_name, info=info)

