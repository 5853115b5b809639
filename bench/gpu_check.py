#!/usr/bin/env python3
"""The figures bench/gpu_check.sh collects, one step a command, each written as JSON.

    python bench/gpu_check.py lotus OUT.json LOTUS_D_FOLDER [--tiny]   images/s, peak memory
    python bench/gpu_check.py server OUT.json CKPTS [--jobs N] [--res PX]
    python bench/gpu_check.py nvdiffrast OUT.json        rasterise one triangle on CUDA

`lotus`: Lotus-D at SD 2's size with random weights (bench/sd2_size.py; `--tiny`: the tiny
checkpoint at 64 px, one timed run, for the CPU rehearsal), ours as the server loads it
(LotusDPipeline.from_pretrained, LOTUS_HALF_PRECISION: fp16 weights on CUDA) at batch 1, 4
and 8, beside upstream's pipeline.py on the same weights as its infer.py --half_precision
runs them (tests/lotus_reference.py, one image a call, fp16 weights, torch.autocast), and
ours with fp32 weights: images/s (median of timed runs after a warm-up, CUDA synchronised),
peak allocated memory, and the largest differences between the three outputs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "scripts"), str(ROOT / "bench")]


def _timed(run, runs: int, cuda: bool) -> tuple[float, float]:
    """Median seconds of `runs` calls after one warm-up, and the peak allocated GiB."""
    import torch

    run()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        if cuda:
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    return statistics.median(seconds), peak


def lotus(out: Path, path: Path, tiny: bool) -> None:
    import numpy as np
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from PIL import Image
    from transformers import CLIPTextModel, CLIPTokenizer

    from lotus_reference import upstream_lotus_d
    from pipelines.lotus.model import LotusDPipeline

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    res, batches, runs = (64, [1, 2], 1) if tiny else (768, [1, 4, 8], 5)
    figures: dict = {"device": torch.cuda.get_device_name() if cuda else "cpu",
                     "weights": "tiny" if tiny else "SD 2 size, random", "res": res,
                     "torch": torch.__version__}
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (res * 3 // 4, res, 3), dtype=np.uint8))

    ours = LotusDPipeline.from_pretrained(path, device, half_precision=True)
    figures["ours_dtype"] = str(ours.unet.dtype)
    figures["ours_weights_gib"] = round(torch.cuda.memory_allocated() / 2**30, 2) \
        if cuda else None
    rows = {}
    for batch in batches:
        images = [photo] * batch
        median, peak = _timed(lambda: ours(images, processing_res=res, latent="mode"),
                              runs, cuda)
        rows[batch] = {"images_per_s": round(batch / median, 2),
                       "peak_gib": peak and round(peak, 2)}
    figures["ours_half"] = rows
    ours_map = ours([photo], processing_res=res, latent="mode")[0].mean(axis=-1)
    del ours

    dtype = torch.float16 if cuda else torch.float32  # upstream's fp16 stops on a CPU
    parts = (UNet2DConditionModel.from_pretrained(path, subfolder="unet", torch_dtype=dtype),
             AutoencoderKL.from_pretrained(path, subfolder="vae", torch_dtype=dtype),
             CLIPTextModel.from_pretrained(path, subfolder="text_encoder",
                                           torch_dtype=dtype),
             CLIPTokenizer.from_pretrained(path, subfolder="tokenizer"))
    parts = tuple(p.to(device).eval() if hasattr(p, "to") else p for p in parts)

    def upstream():  # infer.py:176-181: autocast on the device, one image a call
        with torch.autocast(device) if cuda else torch.autocast("cpu", enabled=False):
            return upstream_lotus_d(*_on(parts, device), photo, processing_res=res,
                                    latent="mode")

    median, peak = _timed(upstream, runs, cuda)
    figures["upstream_half"] = {1: {"images_per_s": round(1 / median, 2),
                                    "peak_gib": peak and round(peak, 2)}}
    figures["max_abs_ours_vs_upstream"] = float(np.abs(upstream() - ours_map).max())
    del parts
    if cuda:
        torch.cuda.empty_cache()

    full = LotusDPipeline.from_pretrained(path, device, half_precision=False)
    median, peak = _timed(lambda: full([photo], processing_res=res, latent="mode"), runs,
                          cuda)
    figures["ours_fp32"] = {1: {"images_per_s": round(1 / median, 2),
                                "peak_gib": peak and round(peak, 2)}}
    full_map = full([photo], processing_res=res, latent="mode")[0].mean(axis=-1)
    figures["max_abs_half_vs_fp32"] = float(np.abs(full_map - ours_map).max())
    out.write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures))


def _on(parts, device):
    """upstream_lotus_d builds its inputs on the CPU (it follows infer.py's CPU path): move
    them to the device as infer.py:187,190 does, by wrapping the models' calls."""
    if device == "cpu":
        return parts
    import torch

    unet, vae, text_encoder, tokenizer = parts

    class OnDevice(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.config, self.dtype = inner, inner.config, inner.dtype

        def forward(self, *args, **kwargs):
            move = lambda v: v.to(device) if isinstance(v, torch.Tensor) else v  # noqa: E731
            return self.inner(*map(move, args), **{k: move(v) for k, v in kwargs.items()})

        def encode(self, x):
            return self.inner.encode(x.to(device))

        def decode(self, z, **kwargs):
            return self.inner.decode(z.to(device), **kwargs)

    return OnDevice(unet), OnDevice(vae), OnDevice(text_encoder), tokenizer


def server(out: Path, checkpoints: Path, jobs: int, res: int) -> None:
    """The real server (gunicorn -c gunicorn.conf.py), PIPELINES=lotus, on a loopback port:
    /depth/sync's p50 over `jobs` jobs after one warm-up, and /health as it was then."""
    import base64
    import io
    import socket

    import numpy as np
    import requests
    from PIL import Image

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    work = Path(tempfile.mkdtemp())
    env = {**os.environ, "PORT": str(port), "CHECKPOINTS_DIR": str(checkpoints),
           "OUTPUT_DIR": str(work / "outputs"), "PIPELINES": "lotus", "PYTHONUNBUFFERED": "1"}
    log = open(out.with_suffix(".log"), "w")
    process = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py"],
                               cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    figures: dict = {"jobs": jobs, "res": res}
    try:
        start = time.monotonic()
        while time.monotonic() - start < 240:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited ({process.returncode})")
            try:
                if requests.get(f"{url}/health", timeout=2).json().get("model_loaded"):
                    break
            except requests.RequestException:
                pass
            time.sleep(0.5)
        figures["ready_seconds"] = round(time.monotonic() - start, 1)
        rng = np.random.default_rng(0)
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (res * 3 // 4, res, 3), dtype=np.uint8)).save(
            buffer, "PNG")
        body = {"image": base64.b64encode(buffer.getvalue()).decode()}
        seconds = []
        for index in range(jobs + 1):
            began = time.perf_counter()
            answer = requests.post(f"{url}/depth/sync", json=body, timeout=120)
            if answer.status_code != 200:
                raise RuntimeError(f"/depth/sync: {answer.status_code} {answer.text[:300]}")
            if index:  # the first is a warm-up
                seconds.append(time.perf_counter() - began)
        figures["depth_sync_p50_s"] = round(statistics.median(seconds), 3)
        figures["depth_sync_max_s"] = round(max(seconds), 3)
        figures["health"] = requests.get(f"{url}/health", timeout=5).json()
    finally:
        process.terminate()
        process.wait(30)
    out.write_text(json.dumps(figures, indent=2))
    print(json.dumps({k: v for k, v in figures.items() if k != "health"}))


def nvdiffrast(out: Path) -> None:
    """One triangle rasterised at 256 x 256 by nvdiffrast's CUDA rasteriser: covered pixels."""
    import nvdiffrast.torch as dr
    import torch

    context = dr.RasterizeCudaContext()
    positions = torch.tensor([[[-0.8, -0.8, 0, 1], [0.8, -0.8, 0, 1], [0, 0.8, 0, 1]]],
                             dtype=torch.float32, device="cuda")
    triangles = torch.tensor([[0, 1, 2]], dtype=torch.int32, device="cuda")
    raster, _ = dr.rasterize(context, positions, triangles, resolution=[256, 256])
    covered = int((raster[..., 3] > 0).sum())
    figures = {"covered_pixels": covered, "of": 256 * 256, "expected_about": int(0.32 * 65536)}
    out.write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures))
    if not covered:
        raise SystemExit("nvdiffrast rasterised nothing")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=["lotus", "server", "nvdiffrast"])
    parser.add_argument("out", type=Path)
    parser.add_argument("checkpoints", type=Path, nargs="?")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--res", type=int, default=768)
    args = parser.parse_args()
    if args.step == "lotus":
        lotus(args.out, args.checkpoints, args.tiny)
    elif args.step == "server":
        server(args.out, args.checkpoints, args.jobs, args.res)
    else:
        nvdiffrast(args.out)


if __name__ == "__main__":
    main()
