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

SCRIPTS = sorted([*ROOT.glob("src/*.sh"), *ROOT.glob("scripts/*.sh"), *ROOT.glob("docker/*.sh"),
                  ROOT / ".ci/run"])


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_shell_scripts_parse_and_pass_shellcheck(script):
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    if shutil.which("shellcheck") is None:
        assert os.environ.get("CI") != "true", "CI must install shellcheck (.ci/run does)"
        pytest.skip("shellcheck is not installed")
    done = subprocess.run(["shellcheck", "-x", str(script.relative_to(ROOT))], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout


def bootstrap_env(tmp_path, checkpoints, **extra):
    """A serverless worker's environment whose volume is a temporary folder."""
    env = {**os.environ, "BOOTSTRAP_SKIP_INSTALL": "1", "PYTHON": sys.executable,
           "LOTUS_API_KEY": "volume-key", "SERVERLESS_VOLUME": str(tmp_path / "runpod-volume"),
           "POD_VOLUME": str(tmp_path / "workspace"),
           # the empty venv sees this environment's packages, as a prepared volume would
           "PYTHONPATH": sysconfig.get_paths()["purelib"], **extra}
    for variable in ("OUTPUT_DIR", "CHECKPOINTS_DIR", "HF_HOME", "PIPELINES", "WORKSPACE"):
        env.pop(variable, None)
    return env


def bootstrap(env):
    job = json.dumps({"input": {"api_key": "volume-key", "image_base64": image_b64(),
                                "processing_res": 32}})
    return subprocess.run(["bash", str(ROOT / "src/bootstrap.sh"), "--test_input", job],
                          env=env, capture_output=True, text=True, timeout=300)


def test_bootstrap_uses_the_serverless_volume_and_reuses_its_venv(tmp_path, checkpoints):
    """Serverless workers see the network volume at /runpod-volume, not /workspace."""
    volume = tmp_path / "runpod-volume" / "Lotus"
    shutil.copytree(checkpoints / CHECKPOINT_FOLDER, volume / "models" / CHECKPOINT_FOLDER)
    env = bootstrap_env(tmp_path, checkpoints)
    first = bootstrap(env)
    log = first.stdout + first.stderr
    assert first.returncode == 0, log[-3000:]
    assert "bootstrap: building the venv" in log and "completed successfully" in log
    for folder in ("src", "cache", "models", "output_images", "logs"):
        assert (volume / folder).is_dir(), folder
    [venv] = volume.glob("venv-*")  # named by the hash of what it holds
    marker = (venv / ".requirements-sha256").read_text().strip()
    assert venv.name == f"venv-{marker[:16]}"
    # built elsewhere and moved: its console scripts must name the venv where it is now
    pip = venv / "bin" / "pip"
    assert pip.read_text().startswith(f"#!{venv / 'bin' / 'python'}")  # python3.x
    assert subprocess.run([str(pip), "--version"], env=env, capture_output=True).returncode == 0
    assert "venv.building" not in subprocess.run(
        ["grep", "-rI", "venv.building", str(venv / "bin")],
        capture_output=True, text=True).stdout
    assert list((volume / "output_images").glob("*.png"))
    assert not (tmp_path / "workspace").exists()
    second = bootstrap(env)
    assert second.returncode == 0 and "bootstrap: reusing" in second.stdout


def test_a_pod_uses_workspace(tmp_path, checkpoints):
    env = bootstrap_env(tmp_path, checkpoints)
    (tmp_path / "workspace").mkdir()
    done = subprocess.run(["bash", "-c", f"source {ROOT / 'src/volume.sh'}; "
                           'echo "$WORKSPACE $HF_HOME $OUTPUT_DIR $VENV"'],
                          env=env, capture_output=True, text=True)
    pod = tmp_path / "workspace" / "Lotus"
    assert done.stdout.split() == [str(pod), str(pod / "cache"), str(pod / "output_images"),
                                   str(pod / "venv")]


def test_a_failed_or_half_built_venv_is_never_reused(tmp_path, checkpoints):
    volume = tmp_path / "runpod-volume" / "Lotus"
    shutil.copytree(checkpoints / CHECKPOINT_FOLDER, volume / "models" / CHECKPOINT_FOLDER)
    failed = bootstrap(bootstrap_env(tmp_path, checkpoints, PYTHON="false"))
    assert failed.returncode != 0
    assert not list(volume.glob("venv*"))
    first = bootstrap(bootstrap_env(tmp_path, checkpoints))
    assert first.returncode == 0, (first.stdout + first.stderr)[-3000:]
    [venv] = volume.glob("venv-*")
    shutil.rmtree(venv)  # what an interrupted copy, without the marker, left at that path
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to("/bin/false")
    again = bootstrap(bootstrap_env(tmp_path, checkpoints))
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    assert "bootstrap: building the venv" in again.stdout


def test_a_changed_requirements_file_builds_a_new_venv_and_keeps_the_old_one(tmp_path,
                                                                              checkpoints):
    """Workers of the previous release may still run from the old venv on the shared
    volume: a new release builds its own beside it and deletes nothing."""
    volume = tmp_path / "runpod-volume" / "Lotus"
    shutil.copytree(checkpoints / CHECKPOINT_FOLDER, volume / "models" / CHECKPOINT_FOLDER)
    app = tmp_path / "app"
    shutil.copytree(ROOT, app, ignore=shutil.ignore_patterns(
        ".git", "node_modules", ".venv", "checkpoints", "outputs", "tests", "web", "bench"))
    first = subprocess.run(["bash", str(app / "src/bootstrap.sh"), "--help"],
                           env=bootstrap_env(tmp_path, checkpoints), capture_output=True,
                           text=True, timeout=300)
    [old] = volume.glob("venv-*")
    (old / "in-use").touch()  # a worker of the old release runs from it
    with (app / "requirements-serverless.txt").open("a") as requirements:
        requirements.write("# a new release\n")
    second = subprocess.run(["bash", str(app / "src/bootstrap.sh"), "--help"],
                            env=bootstrap_env(tmp_path, checkpoints), capture_output=True,
                            text=True, timeout=300)
    assert "bootstrap: building the venv" in second.stdout, first.stdout + second.stdout
    assert (old / "in-use").exists() and len(list(volume.glob("venv-*"))) == 2
    assert f"another release's venv, kept (remove it once no worker runs that release): {old}" \
        in second.stdout


def test_smoke_test_script_passes_against_a_running_server(tmp_path, checkpoints):
    """scripts/smoke_test.sh is the GPU check users run; here it meets the stand-in server."""
    with running_server(tmp_path, checkpoints) as server:
        done = subprocess.run(["bash", str(ROOT / "scripts/smoke_test.sh"), server["url"]],
                              capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("PASS") == 7 and "0 failed" in done.stdout
    for check in ("textured-glb", "vertex-colour-glb", "gaussian-splat-ply", "usdz",
                  "two-object-scene", "depth-map"):
        assert f"PASS  {check}\n" in done.stdout


def test_smoke_test_script_fails_when_the_server_is_down():
    done = subprocess.run(["bash", str(ROOT / "scripts/smoke_test.sh"), "http://127.0.0.1:9"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "FAIL" in done.stdout


FAKE_HF = '''#!{python}
"""`hf download` as the script calls it: real-shaped Lotus-D and Depth Anything V2 files (a
ViT-S backbone), an empty MoGe cache."""
import json, os, sys
from pathlib import Path
args = sys.argv[1:]
with open(os.environ["HF_LOG"], "a") as log:
    log.write(" ".join(args) + "\\n")
if "--local-dir" in args and args[1].startswith("depth-anything/"):
    folder = Path(args[args.index("--local-dir") + 1])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({{"backbone_config": {{"hidden_size": 384}}}}))
    (folder / "preprocessor_config.json").write_text("{{}}")
    (folder / "model.safetensors").write_text("")
elif "--local-dir" in args:
    folder = Path(args[args.index("--local-dir") + 1])
    for part in ("unet", "vae", "text_encoder", "tokenizer"):
        (folder / part).mkdir(parents=True, exist_ok=True)
    (folder / "unet" / "config.json").write_text(json.dumps(
        {{"_class_name": "UNet2DConditionModel", "block_out_channels": [320, 640, 1280, 1280]}}))
    (folder / "model_index.json").write_text(json.dumps({{"_class_name": "LotusDPipeline"}}))
else:
    (Path(os.environ["HF_HOME"]) / "hub").mkdir(parents=True, exist_ok=True)
'''


def test_download_checkpoints_replaces_a_test_lotus_folder_cleanly(tmp_path, checkpoints):
    """`make serve` left the tiny Lotus-D in checkpoints/; the download puts the real one in
    its place, with none of the tiny one's files (its note, its scheduler) left behind; so
    for a tiny Depth Anything V2 folder; and the three Depth Anything V2 Small ones come."""
    from make_tiny_checkpoints import make_depth_anything

    from pipelines.depth_anything import DA2_MODELS, is_test_checkpoint
    from pipelines.lotus import Lotus

    bin_dir, dest = tmp_path / "bin", tmp_path / "checkpoints"
    bin_dir.mkdir()
    (bin_dir / "hf").write_text(FAKE_HF.format(python=sys.executable))
    (bin_dir / "hf").chmod(0o755)
    shutil.copytree(checkpoints / CHECKPOINT_FOLDER, dest / CHECKPOINT_FOLDER)
    tiny_da2 = make_depth_anything(dest, 0, "depth-anything-v2-metric-indoor-small")
    for done in ("pipeline.yaml", "ss_generator.ckpt", "slat_generator.ckpt", "ss_decoder.ckpt",
                 "slat_decoder_gs.ckpt", "slat_decoder_gs_4.ckpt", "slat_decoder_mesh.ckpt",
                 "u2net/u2net.onnx", "torch/hub/checkpoints/dinov2_vitl14_reg4_pretrain.pth",
                 "torch/hub/facebookresearch_dinov2_main/hubconf.py"):
        (dest / done).parent.mkdir(parents=True, exist_ok=True)
        (dest / done).touch()
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHON": sys.executable,
           "HF_LOG": str(tmp_path / "hf.log")}
    env.pop("HF_TOKEN", None)
    assert Lotus(dest).notice  # before: the tiny one, reported as noise
    done = subprocess.run(["bash", str(ROOT / "scripts/download_checkpoints.sh"), str(dest)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "holds the tiny test weights: replacing" in done.stdout
    assert "MISSING" not in done.stdout and "TEST " not in done.stdout
    lotus = dest / CHECKPOINT_FOLDER
    assert not list(lotus.glob("TINY*")) and not (lotus / "scheduler").exists()
    assert Lotus(dest).notice is None
    assert f"{tiny_da2} holds the tiny test weights: replacing" in done.stdout
    assert not list(tiny_da2.glob("TINY*"))
    for model in DA2_MODELS.values():
        assert (dest / model.folder / "config.json").is_file()
        assert not is_test_checkpoint(dest / model.folder)
    again = subprocess.run(["bash", str(ROOT / "scripts/download_checkpoints.sh"), str(dest)],
                           env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "replacing" not in again.stdout


FAKE_HUB = """
import json, os
from pathlib import Path

def snapshot_download(repo_id, local_dir=None, allow_patterns=None, **rest):
    folder = Path(local_dir or Path(os.environ["HF_HOME"], "hub", "models--" + repo_id.replace("/", "--"), "snapshots", "0"))
    for part in ("unet", "vae", "text_encoder", "tokenizer"):
        (folder / part).mkdir(parents=True, exist_ok=True)
    (folder / "model_index.json").write_text("{}")
    with open(os.environ["HUB_LOG"], "w") as log:
        json.dump({"repo_id": repo_id, "local_dir": local_dir, "allow_patterns": allow_patterns,
                   "rest": rest, "HF_HOME": os.environ.get("HF_HOME")}, log)
    return str(folder)
"""


def what_the_worker_downloads(model_id, checkpoints_dir):
    """resolve_checkpoint's own call to snapshot_download, caught."""
    import huggingface_hub
    from pipelines.lotus import resolve_checkpoint

    calls = []
    real = huggingface_hub.snapshot_download
    huggingface_hub.snapshot_download = lambda *args, **kwargs: calls.append((args, kwargs)) or "x"
    try:
        resolve_checkpoint(checkpoints_dir, model_id)
    finally:
        huggingface_hub.snapshot_download = real
    (repo_id,), kwargs = calls[0]
    return repo_id, kwargs


@pytest.mark.parametrize("model_id", ["someone/lotus-copy", None], ids=["MODEL_ID", "default"])
def test_prefetch_downloads_where_the_worker_reads(tmp_path, checkpoints, model_id):
    """With MODEL_ID, into the volume's Hugging Face cache (the worker reads MODEL_ID from
    there); without it, into models/. With the worker's venv python, not the image's."""
    fake = tmp_path / "fake"
    (fake / "huggingface_hub").mkdir(parents=True)
    (fake / "huggingface_hub" / "__init__.py").write_text(FAKE_HUB)
    volume = tmp_path / "runpod-volume" / "Lotus"
    (volume / "venv" / "bin").mkdir(parents=True)  # the worker's venv, as bootstrap builds it
    (volume / "venv" / "bin" / "python").write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    (volume / "venv" / "bin" / "python").chmod(0o755)
    env = {**bootstrap_env(tmp_path, checkpoints), "PYTHONPATH": str(fake),
           "HUB_LOG": str(tmp_path / "hub.json"), "PYTHON": "/nonexistent/python3.12"}
    env.pop("MODEL_ID", None)
    if model_id:
        env["MODEL_ID"] = model_id
    done = subprocess.run(["bash", str(ROOT / "src/prefetch.sh")], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    call = json.loads((tmp_path / "hub.json").read_text())
    assert call["HF_HOME"] == str(volume / "cache")
    if model_id:
        repo_id, kwargs = what_the_worker_downloads(model_id, volume / "models")
        assert (call["repo_id"], call["local_dir"]) == (repo_id, None)
        assert call["allow_patterns"] == kwargs["allow_patterns"] and not kwargs.get("local_dir")
        assert not (volume / "models" / CHECKPOINT_FOLDER).exists()
    else:
        assert call["local_dir"] == str(volume / "models" / CHECKPOINT_FOLDER)
        assert (volume / "models" / CHECKPOINT_FOLDER / "model_index.json").is_file()


def test_one_prefetch_default_everywhere():
    """bootstrap.sh, the RunPod Hub's form and DEPLOY.md's table say the same."""
    import re

    bootstrap = re.findall(r"\$\{PREFETCH:-(\d)\}", (ROOT / "src/bootstrap.sh").read_text())
    hub = json.loads((ROOT / ".runpod/hub.json").read_text())["config"]["env"]
    offered = next(item["input"]["default"] for item in hub if item["key"] == "PREFETCH")
    documented = re.findall(r"^\| `PREFETCH` \| (\d) \|", (ROOT / "DEPLOY.md").read_text(),
                            re.MULTILINE)
    assert bootstrap and set(bootstrap) == {offered} == set(documented) == {"1"}


def test_make_tiny_checkpoints_writes_the_default_lotus_d_given_only_a_folder(tmp_path):
    """As `make serve` runs it on a fresh clone: no model named, the served default."""
    done = subprocess.run([sys.executable, "scripts/make_tiny_checkpoints.py", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / CHECKPOINT_FOLDER / "unet" / "config.json").is_file()
    refused = subprocess.run([sys.executable, "scripts/make_tiny_checkpoints.py", str(tmp_path),
                              "depth-x"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "invalid choice: 'depth-x'" in refused.stderr
