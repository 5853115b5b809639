"""Lotus as upstream computes it, for the tests: EnVision-Research/Lotus at b737e12.

`upstream_lotus_d` follows `LotusDPipeline.__call__` (pipeline.py:1016-1164),
`upstream_lotus_g` `LotusGPipeline.__call__` (pipeline.py:1166-1360), both with infer.py's
seeding and per-task step (infer.py:105-106, 169-172, 183-214), and `upstream_lotus_g_video`
app.py's video loop around it (app.py:152-170), line by line, with the same
diffusers and transformers parts, and none of our pipeline's code. The one substitution:
torchvision's tensor `resize`, which upstream calls (utils/image_utils.py:96, 119), is `F.interpolate(..., align_corners=False,
antialias=antialias)` for bilinear and bicubic and `mode="nearest-exact"` for NEAREST_EXACT
(torchvision/transforms/_functional_tensor.py, `resize`), skipped when the size is already
right (torchvision/transforms/functional.py:470); PyPI's torchvision needs a CUDA
build of torch, so it is written out here. bench/depth.py runs upstream's own file where
it imports, and these functions as its baseline where it does not.
"""

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.utils.torch_utils import randn_tensor

# utils/image_utils.py:147-160 (get_tv_resample_method)
TORCHVISION_MODE = {"bilinear": "bilinear", "bicubic": "bicubic", "nearest": "nearest-exact"}


def torchvision_resize(image: torch.Tensor, size, method: str) -> torch.Tensor:
    if list(image.shape[-2:]) == list(size):  # torchvision/transforms/functional.py:470
        return image
    mode = TORCHVISION_MODE[method]
    if mode == "nearest-exact":
        return F.interpolate(image, size=size, mode=mode)
    return F.interpolate(image, size=size, mode=mode, align_corners=False, antialias=True)


def _rgb_in(image, processing_res, resample_method):
    """infer.py:183-186, then pipeline.py:1080-1093 (the same in both classes): the input
    tensor, its size before resizing, and the resized tensor."""
    rgb_in = torch.tensor(np.array(image.convert("RGB")).astype(np.float32))
    rgb_in = rgb_in.permute(2, 0, 1).unsqueeze(0) / 127.5 - 1.0
    input_size = rgb_in.shape
    if processing_res > 0:  # image_utils.py:88-97
        original_height, original_width = rgb_in.shape[-2:]
        downscale_factor = min(processing_res / original_width,
                               processing_res / original_height)
        new_width = int(original_width * downscale_factor)
        new_height = int(original_height * downscale_factor)
        rgb_in = torchvision_resize(rgb_in, (new_height, new_width), resample_method)
    return input_size, rgb_in


def _task_emb():
    task_emb = torch.tensor([1, 0]).float().unsqueeze(0)  # infer.py:189-190
    return torch.cat([torch.sin(task_emb), torch.cos(task_emb)], dim=-1)


def _prompt_embeds(text_encoder, tokenizer):
    """encode_prompt (pipeline.py:325-365): Lotus's padding_type="do_not_pad"."""
    text_inputs = tokenizer("", padding="do_not_pad", max_length=tokenizer.model_max_length,
                            truncation=True, return_tensors="pt")
    prompt_embeds = text_encoder(text_inputs.input_ids, attention_mask=None)[0]
    return prompt_embeds.to(dtype=text_encoder.dtype)


def _output(decoded, input_size, match_input_res, task):
    """No safety checker -> do_denormalize; VaeImageProcessor.postprocess(output_type="np");
    pipeline.py:1150-1153 -> image_utils.py:118-123; then infer.py:209-214's per-task step."""
    images = (decoded / 2 + 0.5).clamp(0, 1).cpu().permute(0, 2, 3, 1).float().numpy()
    if match_input_res:
        images = torchvision_resize(torch.tensor(images).permute(0, 3, 1, 2),
                                    tuple(input_size[-2:]), "nearest")
        images = images.permute(0, 2, 3, 1).numpy()
    return images[0].mean(axis=-1) if task == "depth" else images[0]


@torch.no_grad()
def upstream_lotus_d(unet, vae, text_encoder, tokenizer, image, processing_res=768,
                     match_input_res=True, resample_method="bilinear", timestep=999,
                     latent="sample", seed=0, task="depth") -> np.ndarray:
    """Depth (height, width) or normals (height, width, 3) for one PIL image, on the CPU in
    fp32."""
    input_size, rgb_in = _rgb_in(image, processing_res, resample_method)
    task_emb = _task_emb()
    prompt_embeds = _prompt_embeds(text_encoder, tokenizer)

    timesteps = torch.tensor([timestep]).long()  # pipeline.py:1105
    posterior = vae.encode(rgb_in).latent_dist  # pipeline.py:1108: .sample(), global RNG
    if latent == "sample":
        torch.manual_seed(seed)  # infer.py:105-106 seed_all(seed)
        rgb_latents = posterior.sample()
    else:  # our deterministic option: the posterior's mean
        rgb_latents = posterior.mode()
    rgb_latents = rgb_latents * vae.config.scaling_factor

    pred = unet(rgb_latents, timesteps[0], encoder_hidden_states=prompt_embeds,
                cross_attention_kwargs=None, return_dict=False, class_labels=task_emb)[0]
    decoded = vae.decode(pred / vae.config.scaling_factor, return_dict=False)[0]
    return _output(decoded, input_size, match_input_res, task)


def upstream_lotus_g(*parts, **options) -> np.ndarray:
    """Lotus-G's depth (height, width) or normals (height, width, 3) for one PIL image, on
    the CPU in fp32, seeded as infer.py --seed seeds it."""
    return _lotus_g(*parts, **options)[0]


def upstream_lotus_g_video(unet, vae, text_encoder, tokenizer, scheduler, frames,
                           processing_res=768, seed=0, **options) -> list[np.ndarray]:
    """Each frame's map as upstream's lotus_video runs Lotus-G (app.py:152-170), with two
    choices where the demo cannot be run as written: the common latent has the processed
    frame's shape (app.py:158-160 uses the frame's own size, which pipeline.py:1310 can
    only concatenate when no resize happened), and each frame's posterior sample is seeded
    as infer.py seeds an image (the demo leaves it to the unseeded global generator,
    pipeline.py:1297). The carried latent is `output[2]` (app.py:98): LotusGPipeline's
    third return, the final `latents` (pipeline.py:1327,1357-1358)."""
    generator = torch.Generator(device="cpu").manual_seed(seed)  # app.py:153-156
    _, rgb_in = _rgb_in(frames[0], processing_res, options.get("resample_method", "bilinear"))
    vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
    latent_common = torch.randn(  # app.py:158-160
        (1, 4, rgb_in.shape[2] // vae_scale_factor, rgb_in.shape[3] // vae_scale_factor),
        generator=generator, dtype=unet.dtype, device="cpu")
    last_frame_latent, outputs = None, []
    for frame in frames:  # app.py:164-171
        latents = latent_common
        if last_frame_latent is not None:
            latents = 0.9 * latents + 0.1 * last_frame_latent
        output, last_frame_latent = _lotus_g(unet, vae, text_encoder, tokenizer, scheduler,
                                             frame, processing_res=processing_res, seed=seed,
                                             latents=latents, **options)
        outputs.append(output)
    return outputs


@torch.no_grad()
def _lotus_g(unet, vae, text_encoder, tokenizer, scheduler, image, processing_res=768,
             match_input_res=True, resample_method="bilinear", timestep=999,
             latent="sample", seed=0, task="depth", latents=None):
    """LotusGPipeline.__call__ on one image, given `latents` or drawing them: the map and
    the final latent (return_dict=False's third item, pipeline.py:1357-1358)."""
    torch.manual_seed(seed)  # infer.py:105-106 seed_all(seed): the global generator
    generator = torch.Generator(device="cpu").manual_seed(seed)  # infer.py:169-172
    input_size, rgb_in = _rgb_in(image, processing_res, resample_method)
    task_emb = _task_emb()

    height, width = rgb_in.shape[2:]  # pipeline.py:1266-1270
    batch_size = rgb_in.shape[0]
    prompt_embeds = _prompt_embeds(text_encoder, tokenizer)
    timesteps = torch.tensor([timestep]).long()  # pipeline.py:1282

    # prepare_latents (pipeline.py:1286-1295 -> 633-653)
    vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
    shape = (batch_size, unet.config.in_channels // 2, int(height) // vae_scale_factor,
             int(width) // vae_scale_factor)
    if latents is None:
        latents = randn_tensor(shape, generator=generator, device=torch.device("cpu"),
                               dtype=prompt_embeds.dtype)
    latents = latents * scheduler.init_noise_sigma

    posterior = vae.encode(rgb_in).latent_dist  # pipeline.py:1297: .sample(), global RNG
    rgb_latents = posterior.sample() if latent == "sample" else posterior.mode()
    rgb_latents = rgb_latents * vae.config.scaling_factor

    for t in timesteps:  # pipeline.py:1308-1327
        latent_model_input = scheduler.scale_model_input(latents, t)
        latent_model_input = torch.cat([rgb_latents, latent_model_input], dim=1)
        x0_pred = unet(latent_model_input, t, encoder_hidden_states=prompt_embeds,
                       cross_attention_kwargs=None, return_dict=False,
                       class_labels=task_emb)[0]
        if len(timesteps) > 1:
            latents = scheduler.step(x0_pred, t, latents, return_dict=False)[0]
        else:
            latents = x0_pred

    decoded = vae.decode(latents / vae.config.scaling_factor, return_dict=False,  # :1334
                         generator=generator)[0]
    return _output(decoded, input_size, match_input_res, task), latents
