"""Lotus-D's forward pass on torch and diffusers, imported only where the model runs (a model
worker process, the serverless worker): the HTTP process validates and queues depth jobs with
`pipelines/lotus.py` alone and never loads torch. Line numbers are upstream's
(EnVision-Research/Lotus at b737e12).
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel
from PIL import Image
from transformers import CLIPTextModel, CLIPTokenizer

from .lotus import ResampleMethod, resized_size

PIPELINE_CLASS_NAMES = ("DirectRegressionPipeline", "LotusDPipeline")
REQUIRED_PARTS = ("model_index.json", "unet", "vae", "text_encoder", "tokenizer")


class LotusDepthPipeline:
    """Photo(s) in, affine-invariant disparity (larger = nearer, in [0, 1]) out.

    Weights stay in fp32 and CUDA runs under `torch.autocast` (fp16), as upstream's
    infer.py:118-122,180 does without --half_precision; the CPU runs plain fp32.
    """

    def __init__(self, unet: UNet2DConditionModel, vae: AutoencoderKL,
                 text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer):
        self.unet, self.vae = unet.eval(), vae.eval()
        self.device = unet.device
        # Images smaller than the VAE's downsampling give an empty latent (upstream fails).
        self.min_side = 2 ** (len(vae.config.block_out_channels) - 1)
        with torch.inference_mode(), self.autocast():
            # encode_prompt("") (pipeline.py:1098): Lotus tokenizes without padding
            # (its padding_type="do_not_pad", pipeline.py:272), then the last hidden state.
            ids = tokenizer("", padding="do_not_pad", max_length=tokenizer.model_max_length,
                            truncation=True, return_tensors="pt").input_ids
            self.prompt_embeds = text_encoder(ids.to(text_encoder.device))[0]
        task = torch.tensor([[1.0, 0.0]])  # infer.py:189-190
        self.task_emb = torch.cat([torch.sin(task), torch.cos(task)], dim=-1).to(self.device)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "cpu") -> "LotusDepthPipeline":
        path = Path(path)
        check_checkpoint(path)
        # Explicit fp32: the published weights are fp16, and transformers' default dtype
        # differs between releases.
        dtype = torch.float32
        unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", torch_dtype=dtype)
        vae = AutoencoderKL.from_pretrained(path, subfolder="vae", torch_dtype=dtype)
        text_encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder",
                                                     torch_dtype=dtype)
        tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer")
        return cls(unet.to(device), vae.to(device), text_encoder.to(device), tokenizer)

    def generators(self, seeds: Sequence[int]) -> list[torch.Generator]:
        """One generator per seed on the model's device (`__call__`'s `generator` list)."""
        return [torch.Generator(self.device).manual_seed(seed) for seed in seeds]

    def autocast(self):
        """infer.py:180: autocast on the model's device; we keep the CPU in fp32 (upstream's
        CPU autocast is bfloat16, a choice for speed our CPU tests do not need)."""
        return torch.autocast("cuda") if self.device.type == "cuda" else nullcontext()

    @torch.inference_mode()
    def __call__(self, images: Sequence[Image.Image], *, processing_res: int = 768,
                 match_input_res: bool = True, resample_method: ResampleMethod = "bilinear",
                 timestep: int = 999,
                 generator: torch.Generator | list[torch.Generator] | None = None,
                 latent: Literal["sample", "mode"] = "sample",
                 on_stage: Callable[[str, float], None] | None = None) -> np.ndarray:
        """Images of one size -> float32 array (batch, height, width). `generator` may be a
        list, one per image: each image's posterior sample then comes from its own
        (diffusers' randn_tensor draws one batch item per generator, utils/torch_utils.py:
        69-79, called by DiagonalGaussianDistribution.sample, models/autoencoders/vae.py:
        793-802, diffusers 0.32.2)."""
        stage = on_stage or (lambda name, fraction: None)
        pixels = _to_tensor(images)
        height, width = pixels.shape[-2:]
        if processing_res > 0:  # pipeline.py:1087-1093
            pixels = resize_max_res(pixels, processing_res, resample_method)
        proc_h, proc_w = pixels.shape[-2:]
        pixels = _pad_to_min_side(pixels, self.min_side).to(self.device)

        with self.autocast():
            stage("encoding", 0.1)
            posterior = self.vae.encode(pixels).latent_dist  # pipeline.py:1108
            rgb_latent = posterior.sample(generator) if latent == "sample" else posterior.mode()
            rgb_latent = rgb_latent * self.vae.config.scaling_factor

            stage("predicting", 0.4)
            batch = rgb_latent.shape[0]
            prediction = self.unet(  # pipeline.py:1115-1122
                rgb_latent, torch.tensor(timestep, device=self.device).long(),
                encoder_hidden_states=self.prompt_embeds.expand(batch, -1, -1),
                class_labels=self.task_emb.expand(batch, -1), return_dict=False)[0]

            stage("decoding", 0.7)
            decoded = self.vae.decode(prediction / self.vae.config.scaling_factor,
                                      return_dict=False)[0]
        # VaeImageProcessor.postprocess(output_type="np"), then infer.py:210's channel mean
        disparity = (decoded.float() / 2 + 0.5).clamp(0, 1).mean(dim=1, keepdim=True)
        disparity = disparity[..., :max(proc_h, 1), :max(proc_w, 1)]
        if match_input_res:  # pipeline.py:1150-1153: always nearest, exact
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


# utils/image_utils.py:147-160: upstream's "nearest" is torchvision's NEAREST_EXACT.
INTERPOLATION = {"bilinear": "bilinear", "bicubic": "bicubic", "nearest": "nearest-exact"}


def resize_max_res(pixels: torch.Tensor, max_edge: int, method: ResampleMethod) -> torch.Tensor:
    """utils/image_utils.py:68-97: scale by min(max_edge/W, max_edge/H), sizes truncated by
    int() (up and down), resized as torchvision does for tensors (antialias=True, which
    nearest ignores; align_corners=False), and not at all when the size is unchanged. A side
    that truncates to 0 is kept at 1 pixel (upstream fails there)."""
    height, width = pixels.shape[-2:]
    size = resized_size(height, width, max_edge)
    if size == (height, width):  # torchvision returns the image untouched (functional.py:470)
        return pixels
    mode = INTERPOLATION[method]
    if mode == "nearest-exact":
        return F.interpolate(pixels, size=size, mode=mode)
    return F.interpolate(pixels, size=size, mode=mode, align_corners=False, antialias=True)


def _to_tensor(images: Sequence[Image.Image]) -> torch.Tensor:
    """(batch, 3, H, W) in [-1, 1], each image built as infer.py:184-186 builds it (a permuted
    view of H x W x 3 pixels, then unsqueeze): the memory layout decides which convolution
    and resize kernels run, and so the last bits of the result."""
    tensors = [torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32))
               .permute(2, 0, 1).unsqueeze(0) / 127.5 - 1.0 for image in images]
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)


def _pad_to_min_side(pixels: torch.Tensor, min_side: int) -> torch.Tensor:
    """Edge-pad a side shorter than the VAE's downsampling factor (8 for Lotus-D), where
    upstream's encoder would produce an empty latent and fail; other sizes go as they are."""
    height, width = pixels.shape[-2:]
    pad_h, pad_w = max(0, min_side - height), max(0, min_side - width)
    if not (pad_h or pad_w):
        return pixels
    return F.pad(pixels, (0, pad_w, 0, pad_h), mode="replicate")
