#!/usr/bin/env python3
"""SAM 3D Objects' peak GPU memory per output, whole model resident vs low-memory mode, one run.

    python bench/sam3d_memory.py                      # in the image: /app/checkpoints, /opt/sam-3d-objects
    python bench/sam3d_memory.py --outputs ply glb    # some outputs only

Needs a CUDA GPU and the real checkpoints. For each mode (SAM3D_OFFLOAD off, the baseline,
then on) it loads the model once and runs one job per output on scripts/smoke_object.png,
then prints, per output, the peak of `torch.cuda.max_memory_allocated` and of
`max_memory_reserved` (what the card must really hold) and the job's seconds, both modes side
by side. DEPLOY.md ("Smaller GPUs") says what to do with the figures.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipelines.sam3d import GenerateRequest, Sam3DObjects  # noqa: E402

OUTPUTS = {"ply": {"output_format": "ply"},
           "glb": {"output_format": "glb", "with_texture": False},
           "glb_textured": {"output_format": "glb", "with_texture": True}}


def measure(mode: str, args, image: Image.Image, folder: Path) -> dict[str, tuple]:
    model = Sam3DObjects(args.checkpoints, args.source, vram_gib=1000.0, offload=mode)
    model.load()
    figures = {}
    for name in args.outputs:
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        model.run(GenerateRequest(image="x", **OUTPUTS[name]), image, folder / f"{mode}-{name}",
                  lambda *_: None)
        torch.cuda.synchronize()
        figures[name] = (torch.cuda.max_memory_allocated() / 2**30,
                         torch.cuda.max_memory_reserved() / 2**30,
                         time.perf_counter() - started)
    del model
    gc.collect()
    torch.cuda.empty_cache()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=Path, default=Path("/app/checkpoints"))
    parser.add_argument("--source", type=Path, default=Path("/opt/sam-3d-objects"))
    parser.add_argument("--image", type=Path, default=ROOT / "scripts" / "smoke_object.png")
    parser.add_argument("--outputs", nargs="+", choices=list(OUTPUTS), default=list(OUTPUTS))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench/sam3d_memory.py measures GPU memory: it needs a CUDA GPU")
    image = Image.open(args.image)
    with tempfile.TemporaryDirectory() as folder:
        whole = measure("off", args, image, Path(folder))
        low = measure("on", args, image, Path(folder))
    print(f"GPU: {torch.cuda.get_device_name()}, "
          f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.1f} GiB")
    print(f"{'output':<14}{'whole model: peak / reserved GiB, s':>38}"
          f"{'low-memory: peak / reserved GiB, s':>38}{'saved GiB':>11}")
    for name in args.outputs:
        (peak, reserved, seconds), (low_peak, low_reserved, low_seconds) = whole[name], low[name]
        print(f"{name:<14}{peak:>18.1f} / {reserved:5.1f} {seconds:8.1f}"
              f"{low_peak:>21.1f} / {low_reserved:5.1f} {low_seconds:8.1f}"
              f"{reserved - low_reserved:>11.1f}")


if __name__ == "__main__":
    main()
