"""Lotus's forward passes on torch and diffusers (Lotus-D and Lotus-G), imported only where
the model runs (a model worker process, the serverless worker): the HTTP process validates
and queues Lotus jobs with the rest of pipelines/lotus/ and never loads torch. Line numbers
are upstream's (EnVision-Research/Lotus at b737e12).
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, ClassVar, Iterable, Iterator, Literal, Sequence

import diffusers
import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from transformers import CLIPTextModel, CLIPTokenizer

from .cost import resized_size
from .request import ResampleMethod

# model_index.json's _class_name by mode: Lotus-D's published name, upstream's own classes
# (train_lotus_d.py:1136-1144, train_lotus_g.py:1187-1195 save LotusDPipeline and
# LotusGPipeline) and their base class (pipeline.py:95). The first is what
# scripts/make_tiny_checkpoints.py writes.
PIPELINE_CLASS_NAMES = {"regression": ("DirectRegressionPipeline", "LotusDPipeline"),
                        "generation": ("LotusGPipeline", "DirectDiffusionPipeline")}
# Lotus-G's UNet takes the photo's latent and the noise latent side by side
# (train_lotus_g.py:733-750 doubles conv_in; pipeline.py:1309-1312 concatenates them).
UNET_IN_CHANNELS = {"regression": 4, "generation": 8}
REQUIRED_PARTS = ("model_index.json", "unet", "vae", "text_encoder", "tokenizer")

def weights_dtype(device: str | torch.device, half_precision: bool) -> torch.dtype:
    """fp16 on CUDA with half precision (upstream's --half_precision, infer.py:118-119),
    else fp32, always on the CPU, where fp16 arithmetic is slow or missing. Explicit either
    way: the published weights are fp16, and transformers' default dtype differs between
    releases."""
    if half_precision and torch.device(device).type == "cuda":
        return torch.float16
    return torch.float32


class LotusDPipeline:
    """Lotus-D: photo(s) in, the decoded annotation (depth or normals, in [0, 1]) out.

    On CUDA the weights are fp16 under `torch.autocast` (fp16), as upstream's infer.py runs
    with --half_precision (infer.py:118-122 dtype, 149-157 from_pretrained(torch_dtype=dtype),
    180 autocast); with `half_precision=False` (LOTUS_HALF_PRECISION=0) fp32 weights under
    the same autocast, its default. The CPU runs plain fp32 weights and arithmetic.
    """

    mode: ClassVar[str] = "regression"

    def __init__(self, unet: UNet2DConditionModel, vae: AutoencoderKL,
                 text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer, scheduler=None):
        self.unet, self.vae, self.scheduler = unet.eval(), vae.eval(), scheduler
        self.device = unet.device
        # Images smaller than the VAE's downsampling give an empty latent (upstream fails).
        self.min_side = 2 ** (len(vae.config.block_out_channels) - 1)
        with torch.inference_mode(), self.autocast():
            # encode_prompt("") (pipeline.py:1098): Lotus tokenizes without padding
            # (its padding_type="do_not_pad", pipeline.py:272), then the last hidden state.
            ids = tokenizer("", padding="do_not_pad", max_length=tokenizer.model_max_length,
                            truncation=True, return_tensors="pt").input_ids
            # pipeline.py:364: cast to the text encoder's dtype (fp32 here)
            self.prompt_embeds = text_encoder(ids.to(text_encoder.device))[0].to(
                text_encoder.dtype)
        task = torch.tensor([[1.0, 0.0]])  # infer.py:189-190
        self.task_emb = torch.cat([torch.sin(task), torch.cos(task)], dim=-1).to(self.device)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "cpu",
                        half_precision: bool = False) -> "LotusDPipeline":
        path = Path(path)
        check_checkpoint(path, cls.mode)
        dtype = weights_dtype(device, half_precision)
        unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", torch_dtype=dtype)
        vae = AutoencoderKL.from_pretrained(path, subfolder="vae", torch_dtype=dtype)
        text_encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder",
                                                     torch_dtype=dtype)
        tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer")
        pipeline = cls(unet.to(device), vae.to(device), text_encoder.to(device), tokenizer,
                       cls.load_scheduler(path))
        del text_encoder  # used once, for the empty prompt's embedding
        if torch.device(device).type == "cuda":
            # hand the text encoder's memory back to the card (the caching allocator would
            # keep it reserved: 0.63 GiB in fp16, 1.27 in fp32, bench/sd2_size.py --count)
            torch.cuda.empty_cache()
        return pipeline

    @staticmethod
    def load_scheduler(path: Path):
        """Lotus-D has no use for one (pipeline.py:1105-1122 calls the UNet once)."""
        return None

    def generators(self, seeds: Sequence[int]) -> list[torch.Generator]:
        """One generator per seed on the model's device (`__call__`'s generator lists)."""
        return [torch.Generator(self.device).manual_seed(seed) for seed in seeds]

    def autocast(self):
        """infer.py:180: autocast on the model's device; we keep the CPU in fp32 (upstream's
        CPU autocast is bfloat16, a choice for speed our CPU tests do not need)."""
        return torch.autocast("cuda") if self.device.type == "cuda" else nullcontext()

    def __call__(self, images: Sequence[Image.Image], **options) -> np.ndarray:
        """`annotate`'s maps alone."""
        return self.annotate(images, **options)[0]

    @torch.inference_mode()
    def annotate(self, images: Sequence[Image.Image], *, processing_res: int = 768,
                 match_input_res: bool = True, resample_method: ResampleMethod = "bilinear",
                 timestep: int = 999,
                 generator: torch.Generator | list[torch.Generator] | None = None,
                 noise_generator: torch.Generator | list[torch.Generator] | None = None,
                 noise: torch.Tensor | None = None,
                 latent: Literal["sample", "mode"] = "sample",
                 on_stage: Callable[[str, float], None] | None = None
                 ) -> tuple[np.ndarray, torch.Tensor]:
        """Images of one size -> float32 array (batch, height, width, 3) in [0, 1], as
        upstream's pipeline returns it (output_type="np"), and the predicted latent the VAE
        decoded (what upstream's LotusGPipeline returns third with return_dict=False,
        pipeline.py:1327,1357-1358). `generator` may be a list, one per
        image: each image's posterior sample then comes from its own (diffusers'
        randn_tensor draws one batch item per generator, utils/torch_utils.py:69-79, called
        by DiagonalGaussianDistribution.sample, models/autoencoders/vae.py:793-802, diffusers
        0.32.2). `noise_generator`, the same, draws Lotus-G's noise latent; `noise`, if given,
        is that latent instead (upstream's `latents` argument, pipeline.py:1178,646-652)."""
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
            prediction = self.predict_latent(
                rgb_latent, torch.tensor(timestep, device=self.device).long(), noise_generator,
                noise)

            stage("decoding", 0.7)
            decoded = self.vae.decode(prediction / self.vae.config.scaling_factor,
                                      return_dict=False)[0]
        # VaeImageProcessor.postprocess(output_type="np"): denormalised, clamped
        annotation = (decoded.float() / 2 + 0.5).clamp(0, 1)
        annotation = annotation[..., :max(proc_h, 1), :max(proc_w, 1)]
        if match_input_res:  # pipeline.py:1150-1153: always nearest, exact
            annotation = F.interpolate(annotation, size=(height, width), mode="nearest-exact")
        return annotation.permute(0, 2, 3, 1).cpu().numpy().astype(np.float32), prediction

    def predict_latent(self, rgb_latent: torch.Tensor, timestep: torch.Tensor,
                       noise_generator=None, noise: torch.Tensor | None = None) -> torch.Tensor:
        """pipeline.py:1111-1122: one UNet call on the photo's latent (Lotus-D draws no
        noise: `noise_generator` and `noise` are Lotus-G's)."""
        batch = rgb_latent.shape[0]
        return self.unet(rgb_latent, timestep,
                         encoder_hidden_states=self.prompt_embeds.expand(batch, -1, -1),
                         class_labels=self.task_emb.expand(batch, -1), return_dict=False)[0]


class LotusGPipeline(LotusDPipeline):
    """Lotus-G: as Lotus-D, with a seeded noise latent beside the photo's (upstream's
    LotusGPipeline.__call__, pipeline.py:1166-1360, with infer.py's single timestep); `video`
    is upstream's video demo loop around it (app.py:152-170)."""

    mode: ClassVar[str] = "generation"

    @staticmethod
    def load_scheduler(path: Path):
        """The checkpoint's own scheduler class and config, as DiffusionPipeline loads it."""
        config = json.loads((Path(path) / "scheduler" / "scheduler_config.json").read_text())
        return getattr(diffusers, config["_class_name"]).from_pretrained(
            path, subfolder="scheduler")

    def predict_latent(self, rgb_latent: torch.Tensor, timestep: torch.Tensor,
                       noise_generator=None, noise: torch.Tensor | None = None) -> torch.Tensor:
        """prepare_latents (pipeline.py:633-653: the given noise, or one drawn, times
        init_noise_sigma), then the loop (pipeline.py:1308-1327) for the one timestep
        infer.py passes: scale, concatenate after the photo's latent, and the UNet's x0
        prediction is the result (no scheduler step for a single timestep)."""
        if noise is None:
            noise = self.draw_noise(tuple(rgb_latent.shape), noise_generator)
        noise = noise.to(self.device) * self.scheduler.init_noise_sigma
        noise = self.scheduler.scale_model_input(noise, timestep)
        return super().predict_latent(torch.cat([rgb_latent, noise], dim=1), timestep)

    def draw_noise(self, shape: tuple[int, ...], generator) -> torch.Tensor:
        """prepare_latents' draw (pipeline.py:646-647): randn_tensor from the generator(s)
        in the text encoder's dtype."""
        return randn_tensor(shape, generator=generator, device=self.device,
                            dtype=self.prompt_embeds.dtype)

    def video(self, frames: Iterable[Image.Image], *, seed: int,
              **options) -> Iterator[np.ndarray]:
        """Each frame's annotation (height, width, 3), in order, with the latent carried
        from frame to frame as upstream's video demo does (app.py:152-170): one common noise
        latent from the seed's generator, and for each frame after the first
        `0.9 * common + 0.1 * the previous frame's latent` as its initial noise
        (app.py:165-168). That latent is `output[2]` of upstream's pipeline call
        (app.py:95-98): LotusGPipeline's final denoised latent, the UNet's x0 prediction the
        VAE decodes (pipeline.py:1327,1334,1357-1358). Every frame is seeded as an image
        request is (a fresh generator of `seed` for its posterior sample), and the common
        noise is the one that image request draws: the shape of the processed frame's
        latent (upstream draws it at the frame's own size, app.py:158-160, which its
        pipeline can only concatenate when the frame is already at the processing size,
        pipeline.py:1258-1266,1310). Frames cannot share a forward pass: each one's noise
        needs the frame before it finished."""
        common = carried = None
        for frame in frames:
            noise = None if carried is None else 0.9 * common + 0.1 * carried
            annotation, carried = self.annotate([frame], generator=self.generators([seed]),
                                                noise_generator=self.generators([seed]),
                                                noise=noise, **options)
            if common is None:  # frame 1's own noise: the same generator, seed and shape
                common = self.draw_noise(tuple(carried.shape), self.generators([seed]))
            yield annotation[0]


PIPELINES = {cls.mode: cls for cls in (LotusDPipeline, LotusGPipeline)}


def check_checkpoint(path: Path, mode: str = "regression") -> None:
    """Fail at load, naming what is missing or which mode the folder holds, rather than
    deep inside diffusers."""
    if not path.is_dir():
        raise FileNotFoundError(f"Lotus checkpoint folder {path} does not exist")
    missing = [part for part in REQUIRED_PARTS if not (path / part).exists()]
    if missing:
        raise FileNotFoundError(f"Lotus checkpoint {path} is missing: {', '.join(missing)}")
    class_name = json.loads((path / "model_index.json").read_text()).get("_class_name")
    if not any(class_name in names for names in PIPELINE_CLASS_NAMES.values()):
        raise ValueError(f"{path} holds a {class_name}, not a Lotus checkpoint")
    unet = json.loads((path / "unet" / "config.json").read_text())
    if unet.get("in_channels") != UNET_IN_CHANNELS[mode]:
        held = {v: k for k, v in UNET_IN_CHANNELS.items()}.get(unet.get("in_channels"), "unknown")
        raise ValueError(f"{path} holds a Lotus {held} checkpoint (a UNet of "
                         f"{unet.get('in_channels')} input channels), not a {mode} one")


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
