"""The image's two CUDA stacks (Dockerfile CUDA_STACK) and its locks, read from the files a
build uses: each stack compiles for the GPUs its torch has kernels for, the rehearsal script
builds what the Dockerfile builds, every pip install is constrained to a lock, and the locks
agree with what CI installs."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "docker"))
from repin_sam3d import REQUIREMENT_FILES, read_pins, repin  # noqa: E402
from sam3d_layer import declared  # noqa: E402

DOCKERFILE = (ROOT / "Dockerfile").read_text()
STACKS = ["default", "blackwell"]
# torch's own kernels (torch.cuda.get_arch_list()): 2.5.1+cu121 is built for sm_50..sm_90;
# PyPI's 2.8.0 (CUDA 12.8) adds sm_100 and sm_120 (its release notes: Blackwell support).
TORCH_SM = {"2.5.1": 90, "2.8.0": 120}
SAM3D_GIT_DIR = os.environ.get("SAM3D_GIT_DIR",
                               "/work/.mirror/facebookresearch+sam-3d-objects/repo")


def stage_env(stage: str, name: str) -> str:
    body = DOCKERFILE.split(f" AS {stage}\n", 1)[1].split("\nFROM ", 1)[0]
    return re.search(rf'{name}=(?:"([^"]*)"|([^"\s\\]*))', body).group(1, 2)[0] or \
        re.search(rf'{name}=(?:"([^"]*)"|([^"\s\\]*))', body)[2]


def arch_numbers(arch_list: str) -> list[int]:
    return [int(arch.removesuffix("+PTX").replace(".", "")) for arch in arch_list.split(";")]


def lock(name: str) -> dict[str, str]:
    lines = (ROOT / "docker" / name).read_text().splitlines()
    return dict(line.lower().split("==") for line in lines if line and not line.startswith("#"))


def normal(name: str) -> str:
    return name.lower().replace("_", "-")


def torch_of(stack: str) -> str:
    return lock(f"sam3d-{stack}.lock")["torch"]


@pytest.mark.parametrize("stack", STACKS)
def test_each_stack_compiles_for_ampere_to_hopper_and_no_further_than_its_torch(stack):
    archs = arch_numbers(stage_env(f"cuda-{stack}", "TORCH_CUDA_ARCH_LIST"))
    assert {80, 86, 89, 90} <= set(archs), "A100, A10/RTX 30xx, L4/L40S/RTX 40xx, H100"
    assert max(archs) <= TORCH_SM[torch_of(stack)], "kernels for a GPU torch cannot run on"
    assert stage_env(f"cuda-{stack}", "TORCH_CUDA_ARCH_LIST").endswith("+PTX")


def test_the_blackwell_stack_compiles_for_b200_and_rtx_50xx_with_a_cuda_that_can():
    assert {100, 120} <= set(arch_numbers(stage_env("cuda-blackwell", "TORCH_CUDA_ARCH_LIST")))
    base = re.search(r"^FROM nvidia/cuda:(\d+)\.(\d+)\S* AS cuda-blackwell", DOCKERFILE, re.M)
    assert (int(base[1]), int(base[2])) >= (12, 8), "nvcc emits sm_100/sm_120 from CUDA 12.8"
    assert "download.pytorch.org/whl/cu128" in stage_env("cuda-blackwell", "SAM3D_EXTRA_INDEXES")
    # NVIDIA's kaolin 0.18.0 wheels for torch 2.8.0 + cu128 (kaolin v0.18.0
    # docs/notes/installation.rst:36-38)
    assert stage_env("cuda-blackwell", "SAM3D_KAOLIN_LINKS").endswith("/torch-2.8.0_cu128.html")


def test_the_default_stack_is_upstreams():
    assert "FROM nvidia/cuda:12.1.1-cudnn8-devel-ubuntu22.04 AS cuda-default" in DOCKERFILE
    assert re.search(r"^ARG CUDA_STACK=default$", DOCKERFILE, re.M)
    assert not (ROOT / "docker" / "default-pins.txt").exists(), "default keeps upstream's pins"
    assert torch_of("default") == "2.5.1" and stage_env("cuda-default", "SAM3D_EXTRA_INDEXES") \
        .endswith("/whl/cu121")
    assert stage_env("cuda-default", "SAM3D_KAOLIN_LINKS").endswith("/torch-2.5.1_cu121.html")


def rehearsal_function(name: str, *args: str) -> str:
    script = (ROOT / "scripts" / "rehearse_cuda_build.sh").read_text()
    body = re.search(rf"^{name}\(\) {{.*?^}}", script, re.M | re.S)[0]
    done = subprocess.run(["bash", "-c", f'ROOT="{ROOT}"\n{body}\n{name} "$@"', name, *args],
                          capture_output=True, text=True, check=True)
    return done.stdout.strip()


@pytest.mark.parametrize("stack", STACKS)
def test_the_rehearsal_builds_what_the_dockerfile_builds_against_the_locked_torch(stack):
    assert rehearsal_function("dockerfile_value", f"cuda-{stack}", "TORCH_CUDA_ARCH_LIST") == \
        stage_env(f"cuda-{stack}", "TORCH_CUDA_ARCH_LIST")
    assert rehearsal_function("torch_of", stack) == torch_of(stack)


def test_the_blackwell_pins_are_in_its_lock_and_nothing_pinned_is_left_to_float():
    blackwell = lock("sam3d-blackwell.lock")
    for old, new in read_pins((ROOT / "docker" / "blackwell-pins.txt").read_text()):
        if "==" in new:
            name, version = new.split("==")
            if re.fullmatch(r"nvidia-.*-cu12", normal(name)):
                continue  # torch's CUDA wheels are not locked: the requirement pins it exactly
            if new in declared():
                continue  # NVIDIA's kaolin wheel: not on PyPI, its declared requirements are
            assert blackwell[normal(name)] == version, new
        if old and "==" in old:  # what it replaces is gone
            assert normal(old.split("==")[0]) not in blackwell or "==" in new
    assert blackwell["torch"] == blackwell["torchaudio"] == "2.8.0"


def moved_to_pips_choice() -> set[str]:
    """What server.lock's header names as pip's choice: where the whole image did not
    resolve with CI's (or SAM 3D Objects' layer's) version."""
    header = (ROOT / "docker" / "server.lock").read_text().partition("pip's choice where")[2]
    return {normal(name) for name in re.findall(r"^#   (\S+) ", header, re.M)}


def test_the_server_lock_is_what_ci_installs_and_leaves_sam3d_versions_alone():
    server = lock("server.lock")
    ci = lock_lines(ROOT / "requirements-serverless.txt")
    moved = moved_to_pips_choice()
    for name, version in server.items():
        if name in ci and normal(name) not in moved:
            assert ci[name] == version, f"{name}: image {version}, CI {ci[name]}"
    # what DEPLOY.md ("every version locked") says wins over SAM 3D Objects' layer, and what
    # moved to pip's choice (the header says why); any other package both locks pinned would
    # hold two versions in the image build
    ours = {"diffusers", "transformers", "huggingface-hub", "accelerate", "safetensors",
            "tokenizers", "trimesh", "pydantic", "pydantic-core", "cryptography", "av"}
    for stack in STACKS:
        shared = {normal(n) for n in server} & {normal(n) for n in lock(f"sam3d-{stack}.lock")}
        assert shared <= ours | moved, f"both locks pin {sorted(shared - ours - moved)}"
    assert all(server[name] == ci[name] for name in ours - {"tokenizers", "pydantic-core"})
    # runpod is the SDK the worker is tested with: never pip's choice
    assert "runpod" not in moved and server["runpod"] == ci["runpod"]
    # the tests run the onnxruntime release the image's rembg runs on the GPU
    assert server["onnxruntime"] == server["onnxruntime-gpu"]
    # what floated before (issue 22): pinned now, by one lock or the other
    held = set(server) | set(lock("sam3d-default.lock"))
    assert {"runpod", "gunicorn", "trimesh", "flask", "pydantic", "urllib3", "numpy"} <= held


def test_our_layer_installs_what_the_server_lock_pins_over_sam3d_objects_layer(tmp_path):
    """pip leaves an installed package it is not asked for alone: our layer asks for each
    server.lock pin of a package SAM 3D Objects' layer holds (run here on a stand-in freeze),
    or pyOpenSSL 26.4 would stay beside runpod's cryptography 44."""
    script = (ROOT / "docker" / "server.sh").read_text()
    assert re.search(r'pip install -c "\$here/server.lock" .*-r "\$work/replaced.txt"', script)
    freeze, out = tmp_path / "freeze.txt", tmp_path / "replaced.txt"
    freeze.write_text("pyOpenSSL==26.4.0\nnumpy==1.26.4\ntransformers==4.39.3\n")
    with out.open("w") as written:
        subprocess.run([sys.executable, str(ROOT / "docker" / "sam3d_layer.py"), "replaced",
                        str(freeze), str(ROOT / "docker" / "server.lock")], stdout=written,
                       check=True)
    server = lock("server.lock")
    assert {line.lower() for line in out.read_text().split()} == \
        {f"{name}=={server[name]}" for name in ("pyopenssl", "transformers")}


# pip 24's answer when the whole image did not resolve (abridged from a lock_image.py run):
# every requirement on cryptography is listed, only pyOpenSSL's excludes the pinned 44.0.3.
PIP_CONFLICT = """\
Processing /pypi/pyopenssl-26.4.0-py3-none-any.whl (from oci<3,>=2.88->mosaicml-streaming==0.7.5)
INFO: pip is looking at multiple versions of pyopenssl to determine which version is compatible
Collecting pyOpenSSL<27.0.0,>=26.2.0 (from oci<3,>=2.88->mosaicml-streaming==0.7.5->-r in.txt)
ERROR: Cannot install -r in.txt (line 140), mosaicml-streaming and oci because these package \
versions have conflicting dependencies.

The conflict is caused by:
    runpod 1.7.7 depends on cryptography<45.0.0
    oci 2.189.0 depends on cryptography<51.0.0 and >=3.2.1; python_version >= "3.8"
    paramiko 3.5.1 depends on cryptography>=3.3
    pyopenssl 26.3.0 depends on cryptography<50 and >=49.0.0
    The user requested (constraint) cryptography==44.0.3

To fix this you could try to:
"""


def test_the_lock_script_blames_the_requirement_that_excludes_the_pinned_version():
    """runpod 1.7.7 allows cryptography 44.0.3, so it is not to blame (the script must never
    move it); pyOpenSSL 26.3 is, and oci, whose range left pip no older pyOpenSSL."""
    from scripts.lock_image import blamed_in

    blamed = blamed_in(PIP_CONFLICT)
    assert set(blamed) == {"pyopenssl", "oci"}
    assert blamed["pyopenssl"] == ("wants cryptography<50,>=49.0.0, 44.0.3 pinned", "cryptography")
    assert blamed["oci"][0].startswith("wants pyOpenSSL<27.0.0,>=26.2.0") and \
        blamed["oci"][1] == "cryptography"
    # where no constraint is named, every package the explanation names is suspect
    unpinned = PIP_CONFLICT.replace("    The user requested (constraint) cryptography==44.0.3\n", "")
    assert set(blamed_in(unpinned)) == {"runpod", "oci", "paramiko", "pyopenssl"}
    assert blamed_in(unpinned)["runpod"] is None


def lock_lines(path: Path) -> dict[str, str]:
    return dict(line.lower().split("==") for line in path.read_text().splitlines()
                if "==" in line and not line.startswith("#"))


def test_every_pip_install_in_the_image_is_constrained_to_a_lock():
    """The Dockerfile runs no pip itself; each `pip install` in its steps (docker/*.sh) runs
    where PIP_CONSTRAINT holds a lock (exported at the script's top) or names one (-c)."""
    assert not re.search(r"^RUN .*pip install", DOCKERFILE.replace("\\\n", " "), re.M)
    installs = 0
    for script in ("sam3d.sh", "server.sh"):
        text = (ROOT / "docker" / script).read_text()
        exported = text.index("export PIP_CONSTRAINT=")
        for match in re.finditer(r"^[^#\n]*pip install[^\n]*", text, re.M):
            installs += 1
            assert match.start() > exported, f"{script}: unconstrained: {match[0].strip()}"
    assert installs >= 6


def upstream_files() -> dict[str, str]:
    commit = re.search(r"^ARG SAM3D_COMMIT=(\S+)", DOCKERFILE, re.M)[1]
    if not Path(SAM3D_GIT_DIR).exists():
        pytest.skip("no SAM 3D Objects git directory (set SAM3D_GIT_DIR)")
    return {name: subprocess.run(["git", "--git-dir", SAM3D_GIT_DIR, "show", f"{commit}:{name}"],
                                 check=True, capture_output=True, text=True).stdout
            for name in REQUIREMENT_FILES}


def test_the_blackwell_pins_rewrite_upstreams_requirements_at_the_pinned_commit():
    files = upstream_files()
    pins = read_pins((ROOT / "docker" / "blackwell-pins.txt").read_text())
    new = repin(files, pins)
    text = "\n".join(new.values())
    assert "torchaudio==2.8.0" in text and "+cu121" not in text
    assert "flash_attn" not in text and "kaolin==0.17.0" not in text
    # NVIDIA's wheel for torch 2.8.0 + cu128: no source build (kaolin setup.py:12 imports
    # pkg_resources, gone from setuptools 82), so no Cython pin for one
    assert "kaolin==0.18.0" in new["requirements.inference.txt"] and "Cython" not in text
    untouched = [line for line in "\n".join(files.values()).splitlines()
                 if line and line not in {old for old, _ in pins}]
    assert all(line in text for line in untouched), "a line no pin names changed"


def test_a_pin_upstream_no_longer_has_stops_the_build():
    files = {name: "" for name in REQUIREMENT_FILES} | {"requirements.txt": "torch==2.5.1\n"}
    with pytest.raises(ValueError, match="0 times"):
        repin(files, [("xformers==0.0.28.post3", "xformers==0.0.32.post2")])
    assert repin(files, [("torch==2.5.1", ""), ("", "Cython==0.29.37")])["requirements.txt"] \
        == "Cython==0.29.37\n"


def test_compose_builds_the_blackwell_image_only_when_asked():
    import yaml

    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    blackwell = services["sam3d-objects-blackwell"]
    assert blackwell["extends"] == {"service": "sam3d-objects"}, "every setting, port, GPU"
    assert blackwell["build"]["args"]["CUDA_STACK"] == "blackwell"
    assert blackwell["image"] == "sam3d-objects:blackwell"
    assert blackwell["profiles"], "a plain `docker compose up` starts one server, not two"
    assert "args" not in services["sam3d-objects"]["build"], "the default stays upstream's"
