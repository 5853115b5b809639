#!/usr/bin/env python3
"""Lotus-D speed: our pipeline and upstream's LotusDPipeline side by side, same weights, one run.

    python bench/depth.py                                     # tiny checkpoint, ours only
    python bench/depth.py --upstream ../Lotus                 # and upstream's pipeline.py
    python bench/depth.py --arch sd2 --upstream ../Lotus      # SD 2 sizes, random weights
    python bench/depth.py --arch sd2 --res 256 --batches 1,2,4,8   # batched forward passes

`--upstream` is a checkout of EnVision-Research/Lotus (its pipeline.py imports torchvision
and tensorboard; without them, or without the path, upstream's row is skipped). `--arch sd2`
builds the real architecture (UNet 865M, VAE 84M, CLIP-H text 340M) with random weights.
CPU: fp32. CUDA: fp32 weights under torch.autocast, as upstream's infer.py runs. Prints
images/s, peak memory, the ratio ours/upstream (must not be below 1) and the largest
difference between the two outputs. `--batches` prints instead images/s for each batch size
(one forward pass over that many images) beside batch 1's, to choose DEPTH_BATCH.
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from PIL import Image
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from make_tiny_checkpoints import make_lotus, write_tokenizer  # noqa: E402
from pipelines.lotus_model import LotusDPipeline  # noqa: E402


def sd2_parts(folder: Path):
    """Stable Diffusion 2's shapes, as Lotus-D uses them, with random weights."""
    unet = UNet2DConditionModel(
        sample_size=96, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20),
        use_linear_projection=True, class_embed_type="projection",
        projection_class_embeddings_input_dim=4)
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    tokenizer = write_tokenizer(folder)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=1024, intermediate_size=4096,
        num_hidden_layers=23, num_attention_heads=16, hidden_act="gelu",
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id))
    return unet, vae, text_encoder, tokenizer


def tiny_parts(folder: Path):
    path = make_lotus(folder)
    return (UNet2DConditionModel.from_pretrained(path / "unet"),
            AutoencoderKL.from_pretrained(path / "vae"),
            CLIPTextModel.from_pretrained(path / "text_encoder"),
            CLIPTokenizer.from_pretrained(path / "tokenizer"))


def upstream_runner(path: str | None, parts, device: str):
    """A callable running upstream's LotusDPipeline as infer.py does, or a reason it can't."""
    if not path:
        return None, "no --upstream path"
    sys.path.insert(0, str(Path(path).resolve()))
    try:
        from pipeline import LotusDPipeline  # type: ignore[import-not-found]
    except Exception as exc:  # torchvision, tensorboard or the file itself missing
        return None, f"upstream's pipeline.py does not import here ({type(exc).__name__}: {exc})"
    unet, vae, text_encoder, tokenizer = parts
    pipe = LotusDPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                          scheduler=DDIMScheduler(), safety_checker=None,
                          feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    task = torch.tensor([[1.0, 0.0]])
    task = torch.cat([torch.sin(task), torch.cos(task)], dim=-1).to(device)

    def run(images, res):
        pixels = torch.cat([  # infer.py:183-186, one image after the other
            torch.tensor(np.array(image).astype(np.float32)).permute(2, 0, 1).unsqueeze(0)
            / 127.5 - 1.0 for image in images])
        autocast = torch.autocast("cuda") if device == "cuda" else contextlib.nullcontext()
        with torch.no_grad(), autocast:
            return pipe(rgb_in=pixels.to(device), prompt="", num_inference_steps=1,
                        output_type="np", timesteps=[999], task_emb=task.repeat(len(images), 1),
                        processing_res=res).images.mean(axis=-1)
    return run, None


def peak_memory_mb(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB, process-wide


def timed(run, runs: int, device: str) -> tuple[float, np.ndarray]:
    output = run()  # warm-up
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
    return float(np.median(times)), output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=["tiny", "sd2"], default="tiny")
    parser.add_argument("--upstream", help="a checkout of EnVision-Research/Lotus")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--res", type=int, default=768)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--batches", help="comma-separated batch sizes, e.g. 1,2,4,8")
    args = parser.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        parts = (sd2_parts if args.arch == "sd2" else tiny_parts)(Path(folder))
    parts = tuple(part.to(device).eval() if hasattr(part, "to") else part for part in parts)
    ours = LotusDPipeline(*parts)
    upstream, reason = upstream_runner(args.upstream, parts, device)
    photo = Image.fromarray(np.random.default_rng(0).integers(
        0, 256, (args.res * 3 // 4, args.res, 3), dtype=np.uint8))
    if args.batches:
        batch_table(ours, photo, [int(size) for size in args.batches.split(",")], args, device)
        return
    images = [photo] * args.batch
    print(f"Lotus-D {args.arch}, {device} ({'autocast fp16' if device == 'cuda' else 'fp32'}), "
          f"batch {args.batch} of {args.res}x{args.res * 3 // 4} px, torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads, median of {args.runs}")
    # the posterior's mean in both, so the outputs can be compared
    with posterior_mean():
        ours_s, ours_out = timed(lambda: ours(images, processing_res=args.res).mean(axis=-1),
                               args.runs, device)
        print(f"  ours      {args.batch / ours_s:7.2f} images/s  {ours_s * 1000:8.0f} ms  "
              f"peak {peak_memory_mb(device):.0f} MiB")
        if upstream is None:
            print(f"  upstream  skipped: {reason}")
            return
        up_s, up_out = timed(lambda: upstream(images, args.res), args.runs, device)
    print(f"  upstream  {args.batch / up_s:7.2f} images/s  {up_s * 1000:8.0f} ms  "
          f"peak {peak_memory_mb(device):.0f} MiB (process peak so far on CPU)")
    print(f"  ours/upstream speed {up_s / ours_s:.2f}x; largest output difference "
          f"{float(np.abs(ours_out - up_out).max()):.2e}")


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
