#!/usr/bin/env python3
"""Throughput of lanes and workers, each beside its baseline in the same run:

1. 3D jobs per second with one model worker and with two (GPUS=cpu vs GPUS=cpu,cpu), through
   the real app and its model processes. The SAM 3D stand-in sleeps SAM3D_STAND_IN_SECONDS
   per job in place of a GPU's work, so the figure is the scheduling, not the model.
2. The wait of a depth job submitted while a 3D job runs: one lane and one worker for both
   pipelines (how the server ran before lanes) beside a lane each.
3. With --depth-batches: depth images/s at batch 1, 2, 4, 8 on SD2-size random weights
   (bench/depth.py --batches; minutes on a CPU).

    python bench/throughput.py [--jobs 8] [--seconds 3] [--depth-batches]
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for folder in (ROOT, ROOT / "tests", ROOT / "scripts"):
    sys.path.insert(0, str(folder))

from PIL import Image  # noqa: E402

from conftest import SAM3D_STAND_IN, image_b64, sam3d_checkpoints, wait_until  # noqa: E402
from make_tiny_checkpoints import make_lotus  # noqa: E402
from pipelines.lotus import DepthRequest, Lotus  # noqa: E402
from pipelines.sam3d_parts.masks import Masker  # noqa: E402
from pipelines.sam3d import GenerateRequest, Sam3DObjects  # noqa: E402
from queue_manager import JobQueue  # noqa: E402
from settings import load_settings  # noqa: E402


def jobs_per_second(work: Path, gpus: str, jobs: int) -> float:
    from app import create_app

    settings = load_settings(checkpoints_dir=work / "checkpoints", output_dir=work / gpus,
                             sam3d_source_dir=SAM3D_STAND_IN, sam3d_vram_gib=40, gpus=gpus,
                             pipelines="sam3d", max_queue_size=100)
    app = create_app(settings)
    client = app.test_client()
    try:
        wait_until(lambda: client.get("/health").get_json()["state"] == "ready", timeout=300)
        started = time.perf_counter()
        ids = [client.post("/generate", json={"image": image_b64(), "output_format": "ply"}
                           ).get_json()["job_id"] for _ in range(jobs)]
        for job_id in ids:
            wait_until(lambda: client.get(f"/job/{job_id}").get_json()["status"] == "completed",
                       timeout=600, interval=0.05)
        return jobs / (time.perf_counter() - started)
    finally:
        app.extensions["queue"].stop()


class OneLane:
    """Both pipelines behind one name: one lane, one worker, as before lanes."""

    name, options_model, oom_advice = "both", DepthRequest, ""

    def __init__(self, objects, depth):
        self.objects, self.depth = objects, depth

    def run(self, options, image, stem, progress):
        pipeline = self.objects if isinstance(options, GenerateRequest) else self.depth
        return pipeline.run(options, image, stem, progress)


def depth_wait(work: Path, lanes: bool) -> float:
    """Seconds from submitting a depth job, while a 3D job runs, to its result."""
    objects = Sam3DObjects(work / "checkpoints", SAM3D_STAND_IN, masker=Masker(None),
                           vram_gib=40.0)
    depth = Lotus(work / "checkpoints")
    objects.load()
    depth.load()
    pipelines = {"sam3d": objects, "lotus": depth} if lanes else {"both": OneLane(objects, depth)}
    queue = JobQueue(pipelines, work / f"lanes-{lanes}")
    queue.start()
    try:
        photo = Image.open(io.BytesIO(base64.b64decode(image_b64())))
        slow = queue.submit("sam3d" if lanes else "both",
                            (GenerateRequest(image="x", output_format="ply"), photo))
        wait_until(lambda: queue.get(slow.id).state.value == "processing", timeout=30)
        submitted = time.perf_counter()
        quick = queue.submit("lotus" if lanes else "both",
                             (DepthRequest(image="x", processing_res=64), photo.convert("RGB")))
        queue.wait(quick.id, 600)
        waited = time.perf_counter() - submitted
        queue.wait(slow.id, 600)
        return waited
    finally:
        queue.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=3.0,
                        help="each stand-in 3D job's run time (a GPU's work)")
    parser.add_argument("--depth-batches", action="store_true")
    args = parser.parse_args()
    os.environ["SAM3D_STAND_IN_SECONDS"] = str(args.seconds)  # the model processes inherit it
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        make_lotus(work / "checkpoints")
        sam3d_checkpoints(work / "checkpoints")
        one, two = (jobs_per_second(work, gpus, args.jobs) for gpus in ("cpu", "cpu,cpu"))
        print(f"{args.jobs} 3D jobs of {args.seconds:g} s each:")
        print(f"  1 worker   {one:6.2f} jobs/s")
        print(f"  2 workers  {two:6.2f} jobs/s  ({two / one:.2f}x)")
        before, after = depth_wait(work, lanes=False), depth_wait(work, lanes=True)
        print(f"a depth job submitted while a {args.seconds:g} s 3D job runs, submit to result:")
        print(f"  one lane (before)  {before:6.2f} s")
        print(f"  a lane each (now)  {after:6.2f} s")
    if args.depth_batches:
        subprocess.run([sys.executable, str(ROOT / "bench" / "depth.py"), "--arch", "sd2",
                        "--res", "256", "--runs", "1", "--batches", "1,2,4,8"], check=True)
    else:
        print("depth batches: run with --depth-batches (bench/depth.py --batches 1,2,4,8)")


if __name__ == "__main__":
    main()
