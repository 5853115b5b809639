"""Shell scripts: syntax and shellcheck, and bootstrap.sh's volume and venv logic."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig

import pytest

from conftest import ROOT, image_b64, running_server
from pipelines.lotus import CHECKPOINT_FOLDER

SCRIPTS = sorted([*ROOT.glob("src/*.sh"), *ROOT.glob("scripts/*.sh"), ROOT / ".ci/run"])


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_shell_scripts_parse_and_pass_shellcheck(script):
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    if shutil.which("shellcheck") is None:
        assert os.environ.get("CI") != "true", "CI must install shellcheck (.ci/run does)"
        pytest.skip("shellcheck is not installed")
    done = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout


def test_bootstrap_lays_out_the_volume_and_reuses_its_venv(tmp_path, checkpoints):
    volume = tmp_path / "Lotus"
    shutil.copytree(checkpoints / CHECKPOINT_FOLDER, volume / "models" / CHECKPOINT_FOLDER)
    env = {**os.environ, "WORKSPACE": str(volume), "BOOTSTRAP_SKIP_INSTALL": "1",
           "PYTHON": sys.executable, "LOTUS_API_KEY": "volume-key",
           # the empty venv sees this environment's packages, as a prepared volume would
           "PYTHONPATH": sysconfig.get_paths()["purelib"]}
    for variable in ("OUTPUT_DIR", "CHECKPOINTS_DIR", "HF_HOME", "PIPELINES"):
        env.pop(variable, None)
    job = json.dumps({"input": {"api_key": "volume-key", "image_base64": image_b64(),
                                "processing_res": 32}})

    def bootstrap():
        return subprocess.run(["bash", str(ROOT / "src/bootstrap.sh"), "--test_input", job],
                              env=env, capture_output=True, text=True, timeout=300)

    first = bootstrap()
    log = first.stdout + first.stderr
    assert first.returncode == 0, log[-3000:]
    assert "bootstrap: creating" in log and "warmup done" in log
    assert "completed successfully" in log
    for folder in ("venv", "src", "cache", "models", "output_images", "logs"):
        assert (volume / folder).is_dir(), folder
    assert (volume / "venv" / "bin" / "python").exists()
    assert list((volume / "output_images").glob("*.png"))
    second = bootstrap()
    assert second.returncode == 0 and "bootstrap: reusing" in second.stdout


def test_smoke_test_script_passes_against_a_running_server(tmp_path, checkpoints):
    """scripts/smoke_test.sh is the GPU check users run; here it meets the stand-in server."""
    with running_server(tmp_path, checkpoints) as server:
        done = subprocess.run(["bash", str(ROOT / "scripts/smoke_test.sh"), server["url"]],
                              capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("PASS") == 5 and "0 failed" in done.stdout


def test_smoke_test_script_fails_when_the_server_is_down():
    done = subprocess.run(["bash", str(ROOT / "scripts/smoke_test.sh"), "http://127.0.0.1:9"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "FAIL" in done.stdout
