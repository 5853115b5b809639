"""bench/gpu_check.sh, rehearsed on the CPU: what it carries fits the device tool's 64 MiB,
and each of its steps runs here with the GPU parts skipped, so the one command a lent GPU
machine gets has run before (no GPU figure is claimed from it)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CARRY_LIMIT = 64 * 2**20


def test_what_it_carries_fits_beside_the_tree_and_is_what_the_list_names():
    carried = dict(line.split("\t")[::-1] for line in
                   (ROOT / "bench/gpu_check_carry.txt").read_text().splitlines())
    wanted = [line.split("==") for line in
              (ROOT / "bench/gpu_check_wheels.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    normal = lambda name: re.sub(r"[-_.]+", "_", name).lower()  # noqa: E731 - wheel names
    for name, version in wanted:
        assert any(normal(f).startswith(f"{normal(name)}_{normal(version)}") for f in carried), \
            f"{name}=={version} is listed but not carried: run bench/gpu_check_prepare.sh"
    assert any(f.startswith("nvdiffrast-") and f.endswith(".tar.gz") for f in carried)
    tree = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                          check=True).stdout.split(b"\0")
    tree_bytes = sum((ROOT / os.fsdecode(f)).stat().st_size for f in tree
                     if f and (ROOT / os.fsdecode(f)).is_file())
    assert sum(map(int, carried.values())) + tree_bytes < CARRY_LIMIT


def test_the_dry_run_runs_every_step_it_can_on_the_cpu(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_STEP_SECONDS": "300",
           "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(["bash", "bench/gpu_check.sh", "--dry-run", str(out)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=900)
    log = (out / "gpu_check.log").read_text() if (out / "gpu_check.log").exists() else ""
    assert done.returncode == 0, done.stdout + done.stderr + log
    figures = json.loads((out / "figures.json").read_text())
    assert figures["dry_run"] is True and figures["cuda"] is False
    steps = figures["steps"]
    assert steps["lotus"]["status"] == "ok", log
    lotus = steps["lotus"]["figures"]
    assert set(lotus["ours_half"]) == {"1", "2"}
    assert all(row["images_per_s"] > 0 for row in lotus["ours_half"].values())
    assert lotus["upstream_half"]["1"]["images_per_s"] > 0
    # on the CPU both sides are fp32: the baseline is wired to the same weights and input
    assert lotus["max_abs_ours_vs_upstream"] < 1e-5
    assert steps["server"]["status"] == "ok", log
    assert steps["server"]["figures"]["depth_sync_p50_s"] > 0
    health = json.loads((out / "health.json").read_text())
    assert health["pipelines"] == {"lotus": "ready"}
    assert steps["nvdiffrast"]["status"] == "skipped"
    assert "64 MiB" in steps["sam3d_texture_baking"]["why"]
    assert sorted(path.name for path in out.iterdir()) == [
        "env.txt", "figures.json", "gpu_check.log", "health.json"]  # within 8 files back
