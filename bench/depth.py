#!/usr/bin/env python3
"""Lotus speed: our pipelines beside upstream's on the same weights, one run.

    python bench/depth.py                                     # tiny weights, all rows
    python bench/depth.py --upstream ../Lotus                 # baseline: upstream's pipeline.py
    python bench/depth.py --arch sd2 --res 256 --frames 100 --video-res 256   # SD 2 sizes
    python bench/depth.py --arch sd2 --tasks normal,video --res 256 --runs 1 \
        --frames 4 --video-res 64                             # SD 2, minutes on 2 CPU cores
    python bench/depth.py --arch sd2 --res 256 --batches 1,2,4,8   # batched forward passes
    python bench/depth.py --tasks depth,da2 --frames 0 --res 640  # Lotus-D beside DA2-Small

Rows: depth and normals (Lotus-D, `--batch` images of `--res` px), then a video of `--frames`
frames of `--video-res` px (longer side, 4:3), processed at that size: Lotus-D, ours
VIDEO_BATCH_FRAMES frames a forward pass, and Lotus-G, ours `LotusGPipeline.video` (the
latent carried from frame to frame), each beside upstream's own loop, one pipeline call per
frame (app.py:164-171). The video rows time the model alone (frames in as images, maps out:
no decoding, no mp4). `--frames 0` or `--tasks` without `video` leaves the video out.

The baseline is upstream's pipeline.py from `--upstream` (a checkout of
EnVision-Research/Lotus; it imports torchvision and tensorboard), run as infer.py and app.py
run it. Where it does not import, or without the path, it is tests/lotus_reference.py,
upstream's code written out for the tests (the CPU only); each row names the one that ran.
`--arch sd2` builds the real architecture (UNet 865M, VAE 84M, CLIP-H text 340M; Lotus-G's
UNet with 8 input channels, train_lotus_g.py:733-750) with random weights; normals run the
same Lotus-D weights (the architecture is the same, only the per-task step differs,
infer.py:209-213). CPU: fp32. CUDA: fp32 weights under torch.autocast, as upstream's
infer.py runs. Both sides encode with the posterior's mean, so the outputs can be compared.
Prints images (frames)/s, peak memory, the speed ratio ours/baseline (not below 1; about 1
for Lotus-G's video, whose frames can no more be batched than upstream's) and the largest
difference between the two outputs.

The `da2` row: Depth Anything V2 Small (pipelines/depth_anything) on the depth row's photos,
so its images/s stand beside Lotus-D's from the same run; its baseline is transformers' own
`pipeline("depth-estimation")` on the same weights, one photo per call. `--arch tiny`: the
tiny checkpoint scripts/make_tiny_checkpoints.py writes, which times the server's path
(processor, batching, resize back), not the real model's speed: the processor brings every
photo to about 518 pixels on its shorter side whatever its size, and a 32-wide, 4-layer
backbone costs next to nothing there. `--arch sd2`: the real ViT-S architecture
(`vits_config`), random weights: the real model's speed. `--batches` prints instead images/s for
each batch size (one forward pass over that many images) beside batch 1's, to choose
DEPTH_BATCH.
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from PIL import Image
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "tests"))

from lotus_reference import upstream_lotus_d, upstream_lotus_g_video  # noqa: E402
from make_tiny_checkpoints import (make_depth_anything, make_lotus, real_processor,  # noqa: E402
                                   write_tokenizer)
from pipelines.lotus import VIDEO_BATCH_FRAMES  # noqa: E402
from pipelines.lotus.model import LotusDPipeline, LotusGPipeline  # noqa: E402

TASKS = ("depth", "normal", "video", "da2")
# Lotus-G's scheduler, as scripts/make_tiny_checkpoints.py writes it
G_SCHEDULER = {"prediction_type": "sample"}
SEED = 0


def sd2_unet(in_channels: int) -> UNet2DConditionModel:
    """Stable Diffusion 2's UNet as Lotus uses it, with random weights."""
    return UNet2DConditionModel(
        sample_size=96, in_channels=in_channels, cross_attention_dim=1024,
        attention_head_dim=(5, 10, 20, 20), use_linear_projection=True,
        class_embed_type="projection", projection_class_embeddings_input_dim=4)


def sd2_parts(folder: Path):
    """Stable Diffusion 2's shapes, as Lotus-D uses them, with random weights."""
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    tokenizer = write_tokenizer(folder)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=1024, intermediate_size=4096,
        num_hidden_layers=23, num_attention_heads=16, hidden_act="gelu",
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id))
    return sd2_unet(4), vae, text_encoder, tokenizer


def tiny_parts(folder: Path, seed: int = 0, name: str = "depth-d-v2-0-disparity"):
    path = make_lotus(folder, seed, name)
    return (UNet2DConditionModel.from_pretrained(path / "unet"),
            AutoencoderKL.from_pretrained(path / "vae"),
            CLIPTextModel.from_pretrained(path / "text_encoder"),
            CLIPTokenizer.from_pretrained(path / "tokenizer"))


def g_parts(arch: str, folder: Path, d_parts):
    """Lotus-G's parts: SD 2's beside Lotus-D's (the same VAE and text encoder, as
    upstream's G and D checkpoints share SD 2's), or the tiny Lotus-G checkpoint's."""
    if arch == "sd2":
        return (sd2_unet(8), *d_parts[1:])
    return tiny_parts(folder, 2, "depth-g-v2-1-disparity")


def on(device: str, parts):
    return tuple(part.to(device).eval() if hasattr(part, "to") else part for part in parts)


def upstream_module(path: str | None):
    """Upstream's pipeline.py as a module, or None and why not."""
    if not path:
        return None, "no --upstream path"
    sys.path.insert(0, str(Path(path).resolve()))
    try:
        import pipeline  # type: ignore[import-not-found]
    except Exception as exc:  # torchvision, tensorboard or the file itself missing
        return None, f"upstream's pipeline.py does not import here ({type(exc).__name__}: {exc})"
    return pipeline, None


def task_output(task: str, maps: np.ndarray) -> np.ndarray:
    """infer.py:209-213: depth is the mean of the three channels, normals all three."""
    return maps.mean(axis=-1) if task == "depth" else maps


def pixels(image: Image.Image, device: str) -> torch.Tensor:
    """infer.py:183-186."""
    return (torch.tensor(np.array(image).astype(np.float32)).permute(2, 0, 1).unsqueeze(0)
            / 127.5 - 1.0).to(device)


def autocast(device: str):
    return torch.autocast("cuda") if device == "cuda" else contextlib.nullcontext()


def task_emb(device: str, batch: int = 1) -> torch.Tensor:
    task = torch.tensor([[1.0, 0.0]])  # infer.py:189-190
    return torch.cat([torch.sin(task), torch.cos(task)], dim=-1).to(device).repeat(batch, 1)


def upstream_pipe(cls, parts, scheduler):
    """One of upstream's pipelines on our parts, as from_pretrained builds it without a
    safety checker."""
    unet, vae, text_encoder, tokenizer = parts
    pipe = cls(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
               scheduler=scheduler, safety_checker=None, feature_extractor=None,
               requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


class Baseline:
    """Upstream's loops: its pipeline.py where it imports, else tests/lotus_reference.py."""

    def __init__(self, module, reason: str | None, parts, gparts, device: str):
        self.parts, self.gparts, self.device = parts, gparts, device
        self.pipes = module and (
            upstream_pipe(module.LotusDPipeline, parts, DDIMScheduler()),
            gparts and upstream_pipe(module.LotusGPipeline, gparts,
                                     DDIMScheduler(**G_SCHEDULER)))
        if self.pipes:
            self.name, self.reason = "upstream", None
        elif device == "cpu":
            self.name, self.reason = "reference", f"tests/lotus_reference.py ({reason})"
        else:
            self.name, self.reason = None, f"{reason}; tests/lotus_reference.py is CPU only"

    def images(self, images: list[Image.Image], res: int, task: str) -> np.ndarray:
        """One Lotus-D call on the batch (upstream), or one image after another (reference)."""
        if not self.pipes:
            return np.stack([upstream_lotus_d(*self.parts, image, processing_res=res,
                                              latent="mode", task=task) for image in images])
        with torch.no_grad(), autocast(self.device):
            maps = self.pipes[0](
                rgb_in=torch.cat([pixels(image, self.device) for image in images]), prompt="",
                num_inference_steps=1, output_type="np", timesteps=[999],
                task_emb=task_emb(self.device, len(images)), processing_res=res).images
        return task_output(task, maps)

    def video_d(self, frames: list[Image.Image], res: int) -> list[np.ndarray]:
        """app.py:169: Lotus-D on each frame alone."""
        return [self.images([frame], res, "depth")[0] for frame in frames]

    def video_g(self, frames: list[Image.Image], res: int) -> list[np.ndarray]:
        """app.py:152-170: the common latent, then 0.9 of it + 0.1 of the previous frame's
        final latent (`output[2]`, pipeline.py:1357-1358) for every frame after the first;
        frames are at the processing size, so the demo's frame-size latent fits."""
        if not self.pipes:
            return upstream_lotus_g_video(*self.gparts, DDIMScheduler(**G_SCHEDULER), frames,
                                          processing_res=res, seed=SEED, latent="mode")
        pipe = self.pipes[1]
        width, height = frames[0].size
        generator = torch.Generator(device=self.device).manual_seed(SEED)
        common = torch.randn((1, 4, height // pipe.vae_scale_factor,
                              width // pipe.vae_scale_factor), generator=generator,
                             dtype=pipe.dtype, device=self.device)
        last, maps = None, []
        for frame in frames:
            latents = common if last is None else 0.9 * common + 0.1 * last
            with torch.no_grad(), autocast(self.device):
                output = pipe(rgb_in=pixels(frame, self.device), prompt="",
                              num_inference_steps=1, latents=latents, output_type="np",
                              timesteps=[999], task_emb=task_emb(self.device),
                              return_dict=False, processing_res=res)
            maps.append(task_output("depth", output[0][0]))
            last = output[2]
        return maps


def peak_memory_mb(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB, process-wide


def timed(run: Callable, runs: int, device: str,
          warm_up: Callable | None = None) -> tuple[float, np.ndarray]:
    (warm_up or run)()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        output = run()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return float(np.median(times)), np.asarray(output)


def compare(label: str, count: int, unit: str, ours: tuple[float, np.ndarray],
            baseline: Baseline, theirs: Callable[[], tuple[float, np.ndarray]],
            device: str) -> None:
    """Our row, then the baseline's and the ratio (or why there is none)."""
    ours_s, ours_out = ours
    print(f"  {label:9s} ours      {count / ours_s:8.2f} {unit}/s  {ours_s * 1000:9.0f} ms  "
          f"peak {peak_memory_mb(device):.0f} MiB", flush=True)
    if baseline.name is None:
        print(f"  {label:9s} baseline  skipped: {baseline.reason}")
        return
    base_s, base_out = theirs()
    print(f"  {label:9s} {baseline.name:9s} {count / base_s:8.2f} {unit}/s  "
          f"{base_s * 1000:9.0f} ms  peak {peak_memory_mb(device):.0f} MiB (process peak "
          f"so far on CPU)")
    print(f"  {label:9s} ours/{baseline.name} speed {base_s / ours_s:.2f}x; largest output "
          f"difference {float(np.abs(ours_out - base_out).max()):.2e}", flush=True)


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(
        0, 256, (height, width, 3), dtype=np.uint8))


def video_frames(count: int, width: int, height: int) -> list[Image.Image]:
    """A random picture sliding one pixel a frame (consecutive frames alike, as in film)."""
    wide = np.asarray(photo(width + count, height))
    return [Image.fromarray(np.ascontiguousarray(wide[:, index:index + width]))
            for index in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=["tiny", "sd2"], default="tiny")
    parser.add_argument("--upstream", help="a checkout of EnVision-Research/Lotus")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--res", type=int, default=768)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tasks", default=",".join(TASKS),
                        help=f"comma-separated rows among {', '.join(TASKS)}")
    parser.add_argument("--frames", type=int, default=100, help="frames of the video rows")
    parser.add_argument("--video-res", type=int, default=64,
                        help="the video frame's longer side (4:3), also its processing_res")
    parser.add_argument("--batches", help="comma-separated batch sizes, e.g. 1,2,4,8")
    args = parser.parse_args()
    tasks = [task for task in args.tasks.split(",") if task]
    if not set(tasks) <= set(TASKS):
        parser.error(f"--tasks takes {', '.join(TASKS)}")

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    video = "video" in tasks and args.frames > 0
    images = [photo(args.res, args.res * 3 // 4)] * args.batch
    if args.batches or video or {"depth", "normal"} & set(tasks):
        time_lotus(args, tasks, video, images, device)
    if "da2" in tasks and not args.batches:
        time_depth_anything(args, images, device)


def time_lotus(args, tasks: list[str], video: bool, images: list[Image.Image],
               device: str) -> None:
    """The Lotus rows (or the --batches table)."""
    with tempfile.TemporaryDirectory() as folder:
        parts = (sd2_parts if args.arch == "sd2" else tiny_parts)(Path(folder))
        gparts = g_parts(args.arch, Path(folder), parts) if video else None
    parts = on(device, parts)
    ours = LotusDPipeline(*parts)
    if args.batches:
        batch_table(ours, photo(args.res, args.res * 3 // 4), [int(size) for size in
                                                                args.batches.split(",")],
                    args, device)
        return
    gparts = gparts and on(device, gparts)
    baseline = Baseline(*upstream_module(args.upstream), parts, gparts, device)
    print(f"Lotus {args.arch}, {device} ({'autocast fp16' if device == 'cuda' else 'fp32'}), "
          f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads; baseline: "
          f"{baseline.reason or 'upstream pipeline.py'}")
    with posterior_mean():
        for task in (task for task in tasks if task in ("depth", "normal")):
            print(f"Lotus-D {task}, batch {args.batch} of {args.res}x{args.res * 3 // 4} px, "
                  f"median of {args.runs}")
            compare(task, args.batch, "images", timed(
                lambda: task_output(task, ours(images, processing_res=args.res)),
                args.runs, device), baseline,
                lambda: timed(lambda: baseline.images(images, args.res, task), args.runs,
                              device), device)
        if video:
            time_video(args, parts, gparts, baseline, device)


def vits_config():
    """Depth Anything V2 Small as transformers' conversion script builds it
    (models/depth_anything/convert_depth_anything_to_hf.py at 23925e16, get_dpt_config lines
    35-41 and 59-76): facebook/dinov2-small's backbone (ViT-S/14: hidden 384, 12 layers, 6
    heads, MLP ratio 4, 518-pixel position grid) with out_indices [3, 6, 9, 12],
    apply_layernorm, reshape_hidden_states=False; fusion 64, neck [48, 96, 192, 384]; head
    32 (DepthAnythingConfig's default). 24.8M parameters, as the model card says."""
    from transformers import DepthAnythingConfig, Dinov2Config

    backbone = Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                            mlp_ratio=4, patch_size=14, image_size=518, layerscale_value=1.0,
                            out_indices=[3, 6, 9, 12], apply_layernorm=True,
                            reshape_hidden_states=False)
    return DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=384,
                               patch_size=14, fusion_hidden_size=64,
                               neck_hidden_sizes=[48, 96, 192, 384])


def da2_checkpoint(arch: str, folder: Path) -> Path:
    """The tiny Small checkpoint, or (`sd2`) a ViT-S one with random weights, saved as the
    real ones are (model, then the published processor settings)."""
    if arch == "tiny":
        return make_depth_anything(folder, SEED, "depth-anything-v2-small")
    from transformers import DepthAnythingForDepthEstimation

    path = folder / "Depth-Anything-V2-Small-vits-random"
    torch.manual_seed(SEED)
    DepthAnythingForDepthEstimation(vits_config()).save_pretrained(path)
    real_processor().save_pretrained(path)
    return path


def time_depth_anything(args, images: list[Image.Image], device: str) -> None:
    """DA2-Small on the depth row's photos: ours (one forward pass for the batch) beside
    transformers' depth-estimation pipeline (one photo per call)."""
    from transformers import pipeline

    from pipelines.depth_anything.model import DepthAnythingV2

    arch = "tiny" if args.arch == "tiny" else "ViT-S"
    with tempfile.TemporaryDirectory() as folder:
        path = da2_checkpoint(args.arch, Path(folder))
        ours = DepthAnythingV2.from_pretrained(path, device=device)
        reference = pipeline("depth-estimation", model=str(path), device=device)
    parameters = sum(parameter.numel() for parameter in ours.model.parameters())
    height, width = ours.processing_size(*images[0].size)
    print(f"Depth Anything V2 Small ({arch}, {parameters / 1e6:.1f}M parameters, fp32), batch "
          f"{len(images)} of {images[0].width}x{images[0].height} px (processed at "
          f"{width}x{height}), median of {args.runs}; baseline: transformers "
          f"{transformers_version()} pipeline('depth-estimation'), one photo per call"
          + ("; tiny weights: the server's path, not the real model's speed"
             if arch == "tiny" else ""))
    ours_s, ours_out = timed(lambda: np.stack(ours.predict(images)), args.runs, device)
    print(f"  da2       ours      {len(images) / ours_s:8.2f} images/s  {ours_s * 1000:9.0f} ms  "
          f"peak {peak_memory_mb(device):.0f} MiB", flush=True)
    base_s, base_out = timed(lambda: np.stack([reference(image)["predicted_depth"].numpy()
                                              for image in images]), args.runs, device)
    print(f"  da2       pipeline  {len(images) / base_s:8.2f} images/s  {base_s * 1000:9.0f} ms  "
          f"peak {peak_memory_mb(device):.0f} MiB (process peak so far on CPU)")
    print(f"  da2       ours/pipeline speed {base_s / ours_s:.2f}x; largest output difference "
          f"{float(np.abs(ours_out - base_out).max()):.2e}", flush=True)


def transformers_version() -> str:
    import transformers

    return transformers.__version__


def time_video(args, parts, gparts, baseline: Baseline, device: str) -> None:
    """The video rows: one timed run each, after a one-frame warm-up."""
    width, height = args.video_res, args.video_res * 3 // 4
    frames, res = video_frames(args.frames, width, height), args.video_res
    print(f"video, {args.frames} frames of {width}x{height} px at processing_res {res}, "
          f"depth, one run each")
    ours_d, ours_g = LotusDPipeline(*parts), LotusGPipeline(
        *gparts, scheduler=DDIMScheduler(**G_SCHEDULER))

    def batched(frames):
        return [task_output("depth", map_) for start in range(0, len(frames), VIDEO_BATCH_FRAMES)
                for map_ in ours_d(frames[start:start + VIDEO_BATCH_FRAMES], processing_res=res)]

    def carried(frames):
        return [task_output("depth", map_) for map_ in ours_g.video(frames, seed=SEED,
                                                                   processing_res=res)]

    for label, run, theirs in (("Lotus-D", batched, baseline.video_d),
                               ("Lotus-G", carried, baseline.video_g)):
        compare(label, args.frames, "frames",
                timed(lambda: run(frames), 1, device, lambda: run(frames[:1])), baseline,
                lambda: timed(lambda: theirs(frames, res), 1, device,
                              lambda: theirs(frames[:1], res)), device)


def batch_table(ours: LotusDPipeline, photo: Image.Image, sizes: list[int], args,
                device: str) -> None:
    """Images/s of one forward pass over each batch size, against the first size's."""
    print(f"Lotus-D {args.arch}, {device}, {args.res}x{args.res * 3 // 4} px, torch "
          f"{torch.__version__}, {torch.get_num_threads()} CPU threads, median of {args.runs}")
    print("  batch  images/s  ms/pass  vs first  peak MiB")
    baseline = None
    for size in sizes:
        seconds, _ = timed(lambda: ours([photo] * size, processing_res=args.res), args.runs,
                           device)
        rate = size / seconds
        baseline = baseline or rate
        print(f"  {size:5d}  {rate:8.2f}  {seconds * 1000:7.0f}  {rate / baseline:7.2f}x  "
              f"{peak_memory_mb(device):8.0f}", flush=True)


@contextlib.contextmanager
def posterior_mean():
    """Make every posterior sample its mean, for both pipelines alike."""
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    sample = DiagonalGaussianDistribution.sample
    DiagonalGaussianDistribution.sample = lambda self, generator=None: self.mode()
    try:
        yield
    finally:
        DiagonalGaussianDistribution.sample = sample


if __name__ == "__main__":
    main()
