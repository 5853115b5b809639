"""Replay the image's install steps here: scripts/replay_image.sh STACK [TREE].

Reads TREE's Dockerfile (default: this checkout) and runs, in order, the RUN, COPY, ENV, ARG
and WORKDIR instructions of its `cuda-STACK` and `server` stages, up to the weights, with the
image's paths under a scratch root, in a Python 3.11 venv holding the pip, setuptools and
wheel of upstream's environments/default.yml. Then `pip check` and installed set == locks.
Stand-ins, only for what this machine cannot reach (each faithful in what it is used for):

- upstream's clone -> scripts/replay/sam-3d-objects: its requirement files and pyproject.toml
  at SAM3D_COMMIT, an empty sam3d_objects package; patching/hydra (it rewrites hydra's
  installed files, no pip step) does nothing.
- micromamba's environment -> that venv (python 3.11, pip/setuptools/wheel at default.yml's
  pins, the PATH the image's ENV gives).
- PyTorch's and NGC's indexes -> PyPI's torch/torchaudio/torchvision at the same versions
  (same requirements metadata; only the nvidia-* CUDA wheels differ, which no lock holds).
- NVIDIA's kaolin bucket -> a wheel named kaolin at the pinned version whose Requires-Dist
  is kaolin's own install_requires at that tag (docker/declared-requires.txt).
- GitHub requirements -> wheels whose Requires-Dist is what that commit declares; a git
  kaolin (a source build) -> a source tree whose setup.py imports pkg_resources, as kaolin's
  setup.py:12 does, built by pip as the image's pip would build it.
- CUDA compiles, apt, the base image -> skipped (scripts/rehearse_cuda_build.sh covers the
  compiles).
"""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SNAPSHOT = ROOT / "scripts" / "replay" / "sam-3d-objects"
# not runnable here (what stands in: module docstring)
SKIPPED = re.compile(r"apt-get|micromamba|git clone|check_cuda_extensions|checkpoints\.py|useradd")
# the image's ENV that would point at what this machine lacks
KEEP_HOST_ENV = {"PATH", "CUDA_HOME", "CONDA_PREFIX", "MAMBA_ROOT_PREFIX", "PIP_NO_CACHE_DIR"}


def say(message: str) -> None:
    print(f"replay: {message}", flush=True)


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    out = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            kind, _, args = line.strip().partition(" ")
            out.append((kind.upper(), args.strip()))
    return out


def stage(steps: list[tuple[str, str]], name: str) -> list[tuple[str, str]]:
    start = next(i for i, (k, a) in enumerate(steps) if k == "FROM" and a.endswith(f" AS {name}"))
    end = next((i for i, (k, _) in enumerate(steps) if k == "FROM" and i > start), len(steps))
    return steps[start + 1:end]


def env_pairs(args: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in shlex.split(args))


def wheel(folder: Path, name: str, version: str, requires: list[str]) -> Path:
    """A wheel holding nothing but metadata: Name, Version, Requires-Dist."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[-.]+", "_", name)
    path = folder / f"{stem}-{version}-py3-none-any.whl"
    info = f"{stem}-{version}.dist-info"
    metadata = "".join([f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
                        *(f"Requires-Dist: {r}\n" for r in requires)])
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{info}/METADATA", metadata)
        archive.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: replay\n"
                                          "Root-Is-Purelib: true\nTag: py3-none-any\n")
        archive.writestr(f"{info}/RECORD", "")
    return path


def standins(folder: Path) -> None:
    sys.path.insert(0, str(ROOT / "docker"))
    from sam3d_layer import declared

    sources = {line[1:line.index("]")]: line for line in
               (ROOT / "docker" / "declared-requires.txt").read_text().splitlines()
               if line.startswith("[")}
    entries = declared()
    # a stand-in another one points at (MoGe -> utils3d) first
    for key, requires in sorted(entries.items(), key=lambda e: any(r in entries for r in e[1])):
        if "==" in key:  # NVIDIA's bucket, or a PyPI sdist whose metadata needs torch
            name, version = key.split("==")
            wheel(folder, name, version, requires)
            if name == "kaolin":  # the git kaolin the old Blackwell pins built from source
                tree = folder / "git-kaolin" / re.search(r"\((\w+)\)", sources[key])[1]
                tree.mkdir(parents=True, exist_ok=True)
                (tree / "setup.py").write_text(
                    "# stand-in: kaolin's setup.py:12 imports pkg_resources before setup()\n"
                    "from pkg_resources import parse_version  # noqa: F401\n"
                    "from setuptools import setup\n"
                    f"setup(name='kaolin', version={version!r}, install_requires={requires!r})\n")
        else:  # a GitHub requirement at the commit its source line names
            commit = re.search(r"@(\w+)", sources[key])[1]
            nested = [r if r not in entries else
                      f"{r} @ {next((folder / f'git-{r.lower()}').glob('*.whl')).as_uri()}"
                      for r in requires]
            wheel(folder / f"git-{key.lower()}", key, f"0+git.{commit}", nested)


def replay(stack: str, tree: Path, work: Path) -> int:
    fs, venv, state, stand = work / "fs", work / "venv", work / "state", work / "standins"
    for folder in (fs / "etc", fs / "tmp", state, stand, work / "bin"):
        folder.mkdir(parents=True, exist_ok=True)
    pins = dict(re.findall(r"- (\w+)=([\d.]+)=", (SNAPSHOT / "default.yml.pins").read_text()))
    say(f"{stack}: Python 3.11 venv with pip {pins['pip']}, setuptools {pins['setuptools']}, "
        f"wheel {pins['wheel']} (environments/default.yml)")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([venv / "bin/python", "-m", "pip", "install", "-q",
                    f"pip=={pins['pip']}", f"setuptools=={pins['setuptools']}",
                    f"wheel=={pins['wheel']}"], check=True)
    # utils3d first: MoGe's stand-in points at it
    standins(stand)
    shim = work / "bin" / "pip"
    shim.write_text(f"#!/bin/sh\nexec {venv}/bin/python {ROOT}/scripts/replay/pip_shim.py \"$@\"\n")
    shim.chmod(0o755)

    def mapped(text: str) -> str:
        return re.sub(r"(?<![\w.])/(opt|etc|tmp|app)\b", lambda m: f"{fs}/{m[1]}", text)

    env = {**os.environ, "REPLAY_STATE": str(state), "REPLAY_STANDINS": str(stand),
           "PATH": f"{work / 'bin'}:{venv / 'bin'}:{os.environ['PATH']}",
           "SAM3D_ETC": str(fs / "etc"), "CUDA_STACK": stack, "VIRTUAL_ENV": str(venv)}
    env.pop("PIP_CONSTRAINT", None)
    steps = instructions(tree / "Dockerfile")
    cwd = fs
    for kind, args in stage(steps, f"cuda-{stack}") + stage(steps, "server"):
        if kind == "COPY" and "checkpoints/" in args:
            break  # the weights and our code: nothing more is installed
        if kind == "ENV":
            for key, value in env_pairs(args).items():
                if key not in KEEP_HOST_ENV:
                    env[key] = mapped(os.path.expandvars(value))
        elif kind == "ARG" and "=" in args:
            key, value = args.split("=", 1)
            env.setdefault(key, value)
        elif kind == "WORKDIR":
            cwd = Path(mapped(args))
            cwd.mkdir(parents=True, exist_ok=True)
        elif kind == "COPY" and "--from" not in args:
            *sources, target = shlex.split(args)
            target = Path(mapped(target)) if target.startswith("/") else cwd / target
            for pattern in sources:
                for source in sorted(tree.glob(pattern)) or [tree / pattern]:
                    if source.is_dir():
                        shutil.copytree(source, target, dirs_exist_ok=True)
                    else:
                        target.mkdir(parents=True, exist_ok=True) if args.endswith("/") else None
                        shutil.copy(source, target)
        elif kind == "RUN":
            if "git clone" in args:  # upstream's clone: its requirement files at the commit
                source = Path(env["SAM3D_SOURCE_DIR"])
                shutil.copytree(SNAPSHOT, source, dirs_exist_ok=True)
                (source / "sam3d_objects").mkdir(exist_ok=True)
                (source / "sam3d_objects" / "__init__.py").touch()
                (source / "patching").mkdir(exist_ok=True)
                hydra = source / "patching" / "hydra"
                hydra.write_text("#!/bin/sh\necho 'replay: patching/hydra skipped'\n")
                hydra.chmod(0o755)
                continue
            if SKIPPED.search(args):
                say(f"skipped (not runnable here): RUN {args[:90]}")
                continue
            # the image's stand-ins for what this machine cannot reach (docstring)
            env.update({"SAM3D_TORCH_INDEX": "", "SAM3D_EXTRA_INDEXES": "",
                        "SAM3D_KAOLIN_LINKS": str(stand)})
            command = mapped(args)
            say(f"RUN {args}")
            done = subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=cwd, env=env)
            if done.returncode:
                say(f"{stack}: FAILED (exit {done.returncode}) at RUN {args}")
                return 1
    return verify(stack, tree, env, state)


def verify(stack: str, tree: Path, env: dict, state: Path) -> int:
    say(f"{stack}: pip check")
    checked = subprocess.run(["pip", "check"], env=env, capture_output=True, text=True)
    print(checked.stdout, end="")
    sys.path.insert(0, str(ROOT / "docker"))
    from sam3d_layer import TORCH_CUDA_WHEELS, declared, name_of, normal, read_lock

    stood_in = {name_of(key) for key in declared()}  # no lock holds them (their docstring)

    installed = json.loads((state / "installed.json").read_text())
    sam3d = {normal(n): v for n, v in read_lock(tree / "docker" / f"sam3d-{stack}.lock").items()}
    server = {normal(n): v for n, v in read_lock(tree / "docker" / "server.lock").items()}
    problems = []
    for key, dist in sorted(installed.items()):
        if dist["url"] or TORCH_CUDA_WHEELS.match(key) or key in stood_in:
            continue
        want = server.get(key, sam3d.get(key))
        version = re.sub(r"\+.*", "", dist["version"])
        if want is None:
            problems.append(f"{dist['name']} {version}: in no lock")
        elif want != version:
            problems.append(f"{dist['name']} {version}: locked {want}")
    missing = sorted(set(sam3d) - set(installed))
    problems += [f"{name}: locked, not installed" for name in missing]
    for line in problems:
        say(f"{stack}: installed != lock: {line}")
    if not problems:
        say(f"{stack}: installed set == locks ({len(installed)} distributions)")
    (state / "pip-check.txt").write_text(checked.stdout)
    say(f"{stack}: {'PASSED' if not problems else 'FAILED'}")
    return 1 if problems else 0


if __name__ == "__main__":
    stack_name = sys.argv[1] if len(sys.argv) > 1 else "default"
    source_tree = Path(sys.argv[2]).resolve() if len(sys.argv) > 2 else ROOT
    keep = os.environ.get("REPLAY_WORK")
    scratch = Path(keep) if keep else Path(tempfile.mkdtemp(prefix=f"replay-{stack_name}-"))
    try:
        sys.exit(replay(stack_name, source_tree, scratch))
    finally:
        if not keep:
            shutil.rmtree(scratch, ignore_errors=True)
