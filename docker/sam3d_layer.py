"""What the image installs, decided in one place: run by the Dockerfile's steps (docker/*.sh),
by scripts/lock_image.py (which writes the locks from `resolve`) and by
scripts/replay_image.sh (which runs the Dockerfile's steps here). Standard library only, plus
the `packaging` that pip vendors: it runs in upstream's fresh environment.

    python sam3d_layer.py requirements SRC STACK      the layer's requirements, PyPI-resolvable
    python sam3d_layer.py check SRC STACK             resolve them (pip --dry-run) against
                                                      docker/sam3d-STACK.lock: equal, or exit 1
    python sam3d_layer.py layer FREEZE SERVER_LOCK    pip freeze less what server.lock pins
    python sam3d_layer.py replaced FREEZE SERVER_LOCK server.lock's pins of what freeze holds
    python sam3d_layer.py server-requirements PYPROJECT  what our layer installs

Names are compared PEP 503-normalised (`huggingface_hub` == `huggingface-hub`): pip freeze
writes a distribution's own spelling, the locks pip's report's; a constraint file holding
both spellings at two versions is ResolutionImpossible (issue 29, the old Dockerfile's awk).
"""

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
# upstream's requirement files at SAM3D_COMMIT, as its pyproject.toml's hatch hooks read them
# (pyproject.toml:24-30): the base list and the dev, p3d and inference extras
REQUIREMENT_FILES = ["requirements.txt", "requirements.dev.txt", "requirements.p3d.txt",
                     "requirements.inference.txt"]
# The image's nvdiffrast (Dockerfile NVDIFFRAST_COMMIT), installed after upstream's extras.
NVDIFFRAST = "nvdiffrast"
# torch's CUDA wheels: torch's own exact pins choose them, and PyPI's torch 2.5.1 (the cu124
# build) pins other ones than the image's 2.5.1+cu121, so no lock holds them.
TORCH_CUDA_WHEELS = re.compile(r"^(nvidia-.*-cu12|triton)$")


def normal(name: str) -> str:
    """PEP 503: lowercase, runs of -_. as one -."""
    return re.sub(r"[-_.]+", "-", name).lower()


def name_of(requirement: str) -> str:
    return normal(re.split(r"[\s=<>!~@\[;]", requirement.strip(), maxsplit=1)[0])


def declared() -> dict[str, list[str]]:
    """docker/declared-requires.txt: key -> requirement lines."""
    entries: dict[str, list[str]] = {}
    key = None
    for line in (HERE / "declared-requires.txt").read_text().splitlines():
        if line.startswith("["):
            key = line[1:line.index("]")]
            entries[key] = []
        elif line.strip() and not line.startswith("#") and key is not None:
            entries[key].append(line.strip())
    return entries


def declared_for(line: str, entries: dict[str, list[str]]) -> list[str] | None:
    """What stands for an upstream requirement PyPI cannot give: a git requirement (by name,
    its commit is the image's), a package only NVIDIA's index has, an sdist whose metadata
    needs torch. None: PyPI resolves the line itself."""
    line = line.strip()
    if line in entries:
        return entries[line]
    if " @ " in line or line.startswith("git+"):
        name = name_of(line)
        for key, requirements in entries.items():
            if normal(key) == name:
                return requirements
        raise SystemExit(f"{line}: a direct requirement docker/declared-requires.txt does not name")
    return None


def upstream_lines(source: Path) -> list[str]:
    return [line.split("#")[0].strip() for name in REQUIREMENT_FILES
            for line in (source / name).read_text().splitlines()
            if line.split("#")[0].strip()]


def expand(line: str, entries: dict[str, list[str]], stood_in: set[str]) -> list[str]:
    instead = declared_for(line, entries)
    if instead is None:
        # `+cu121` local versions: the release's requirements are the same; PyTorch's
        # index, where the image installs them from, gives the local build
        return [re.sub(r"\+cu\d+", "", line)]
    stood_in.add(name_of(line))
    return [r for requirement in instead for r in expand(requirement, entries, stood_in)]


def requirements(source: Path) -> tuple[list[str], set[str]]:
    """The layer's requirements as pip resolves them from PyPI (upstream's files, already
    repinned, plus nvdiffrast), and the names whose declared requirements stand in."""
    entries, stood_in = declared(), set()
    lines = upstream_lines(source) + [f"{NVDIFFRAST} @ git+https://github.com/NVlabs/nvdiffrast.git"]
    return [r for line in lines for r in expand(line, entries, stood_in)], stood_in


def resolve(listed: list[str], constraints: list[Path] = (), python: str = sys.executable
            ) -> dict[str, str]:
    """pip's resolution (name -> version) of `listed` from the indexes pip is configured
    with (PIP_* variables), without installing or downloading a wheel (PEP 658 metadata)."""
    with tempfile.TemporaryDirectory() as folder:
        requirement_file, report = Path(folder, "in.txt"), Path(folder, "report.json")
        requirement_file.write_text("\n".join(listed) + "\n")
        done = subprocess.run([python, "-m", "pip", "install", "--progress-bar=off", "--dry-run",
                               "--ignore-installed", "--report", str(report), "-r",
                               str(requirement_file),
                               *(f"--constraint={path}" for path in constraints)],
                              capture_output=True, text=True)
        if done.returncode:
            raise ResolutionFailed(done.stdout + done.stderr)
        return {item["metadata"]["name"]: item["metadata"]["version"]
                for item in json.loads(report.read_text())["install"]}


class ResolutionFailed(Exception):
    pass


def read_lock(path: Path) -> dict[str, str]:
    return dict(line.split("==") for line in path.read_text().splitlines()
                if "==" in line and not line.startswith("#"))


def layer_pins(resolved: dict[str, str], stood_in: set[str]) -> dict[str, str]:
    """What a lock holds of a resolution: not torch's CUDA wheels, not the stood-in names."""
    return {name: re.sub(r"\+.*", "", version) for name, version in resolved.items()
            if not TORCH_CUDA_WHEELS.match(normal(name)) and normal(name) not in stood_in}


def check(source: Path, stack: str) -> int:
    """The whole layer resolved with its lock as the constraint, compared with the lock: a
    pin PyPI no longer gives, a lock short of a requirement (kaolin's jupyter_client<8), or
    a package the lock does not hold, stops the build here, before any CUDA compile."""
    lock = HERE / f"sam3d-{stack}.lock"
    listed, stood_in = requirements(source)
    env_constraint = os.environ.pop("PIP_CONSTRAINT", None)  # the lock is given explicitly
    try:
        resolved = resolve(listed, [lock])
    except ResolutionFailed as failed:
        output = str(failed)
        print(output[output.find("ERROR"):][-4000:] if "ERROR" in output else output[-4000:],
              file=sys.stderr)
        print(f"sam3d_layer check: SAM 3D Objects' layer ({stack}) does not resolve with "
              f"{lock.name}", file=sys.stderr)
        return 1
    finally:
        if env_constraint is not None:
            os.environ["PIP_CONSTRAINT"] = env_constraint
    got = {normal(n): v for n, v in layer_pins(resolved, stood_in).items()}
    want = {normal(n): v for n, v in read_lock(lock).items()}
    differences = [f"  {name}: resolved {got.get(name, '-')}, locked {want.get(name, '-')}"
                   for name in sorted(set(got) | set(want)) if got.get(name) != want.get(name)]
    if differences:
        print(f"sam3d_layer check: {lock.name} is not what the layer resolves to:\n"
              + "\n".join(differences), file=sys.stderr)
        return 1
    print(f"sam3d_layer check: SAM 3D Objects' layer ({stack}) resolves to {lock.name} "
          f"({len(got)} pins; stood in for: {', '.join(sorted(stood_in))})")
    return 0


def freeze_pins(path: Path) -> dict[str, str]:
    return {normal(line.split("==")[0]): line.strip() for line in path.read_text().splitlines()
            if "==" in line and not line.startswith("#")}


def layer(freeze: Path, server_lock: Path) -> str:
    """/etc/sam3d-layer.txt: what SAM 3D Objects' layer holds, less what server.lock pins
    (our layer's versions win there), compared by normalised name."""
    ours = freeze_pins(server_lock)
    return "".join(line + "\n" for name, line in freeze_pins(freeze).items() if name not in ours)


def replaced(freeze: Path, server_lock: Path) -> str:
    """server.lock's pins of packages the layer holds: pip leaves an installed package it is
    not asked for alone, so these are asked for by name."""
    held = freeze_pins(freeze)
    return "".join(line + "\n" for name, line in freeze_pins(server_lock).items() if name in held)


def server_requirements(pyproject: Path) -> str:
    """pyproject.toml's dependencies, its serverless extra, and rembg with its gpu extra
    (onnxruntime-gpu, whose CUDA provider uses the CUDA 12 and cuDNN 9 libraries torch's
    wheels bring)."""
    import tomllib

    project = tomllib.loads(pyproject.read_text())["project"]
    extras = project["optional-dependencies"]
    rembg = [r.replace("rembg", "rembg[gpu]", 1) for r in extras["segment"] if name_of(r) == "rembg"]
    return "\n".join(project["dependencies"] + extras["serverless"] + rembg) + "\n"


def main(argv: list[str]) -> int:
    command, *args = argv
    if command == "requirements":
        print("\n".join(requirements(Path(args[0]))[0]))
    elif command == "check":
        return check(Path(args[0]), args[1])
    elif command == "layer":
        sys.stdout.write(layer(Path(args[0]), Path(args[1])))
    elif command == "replaced":
        sys.stdout.write(replaced(Path(args[0]), Path(args[1])))
    elif command == "server-requirements":
        sys.stdout.write(server_requirements(Path(args[0])))
    else:
        raise SystemExit(__doc__)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
