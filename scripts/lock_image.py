"""Write the image's locks (docker/*.lock), which its pip installs use as constraints.

  sam3d-<stack>.lock  SAM 3D Objects' layer: upstream's four requirements files at the
                      Dockerfile's SAM3D_COMMIT (with docker/<stack>-pins.txt applied),
                      resolved once, together, by pip against PyPI for Python 3.11.
  server.lock         our layer: the versions CI installs (requirements-serverless.txt,
                      the Makefile's constraints) for every package our layer brings that
                      SAM 3D Objects' layer does not already hold, and OURS; pip's choice
                      where the whole image did not resolve with them (lock_server).

The SAM 3D Objects locks come from docker/sam3d_layer.py's `requirements` (one tool decides
what the image installs: the image's `check` step resolves the same list against the lock,
and scripts/replay_image.sh replays the Dockerfile's steps with it). What PyPI cannot give is
resolved as what it declares (docker/declared-requires.txt: the git requirements, kaolin's
whole install_requires, flash_attn, nvidia-pyindex) and left out of the lock; so are torch's
CUDA wheels (nvidia-*, triton): torch's own pins choose them. `+cu121` local versions
resolve as the release. Run it with the image's pip (25.0.1).

    python scripts/lock_image.py SAM3D_GIT_DIR [CI_PYTHON] [--server-only]
    (Python 3.11, as upstream's; CI_PYTHON: the python of an environment `make test`
    installed, default .venv/bin/python; --server-only keeps the sam3d locks)
"""

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "docker"))
from repin_sam3d import REQUIREMENT_FILES, read_pins, repin  # noqa: E402
from sam3d_layer import TORCH_CUDA_WHEELS, layer_pins, name_of  # noqa: E402
from sam3d_layer import requirements as layer_requirements  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
STACKS = ["default", "blackwell"]
# CI tests this release's CPU build (pyproject.toml's test extra); PyPI's onnxruntime-gpu
# 1.31.1 links CUDA 13 (libcudart.so.13), which neither image has. 1.23.2's CUDA provider
# links libcudart.so.12, libcublas(Lt).so.12, libcufft.so.11, libcurand.so.10 and
# libcudnn.so.9 (readelf -d): the CUDA 12 and cuDNN 9 libraries both images' torch wheels
# bring.
ONNXRUNTIME_GPU = "1.23.2"
# Where our layer's version (CI's) wins over SAM 3D Objects' resolution: the Lotus-D stack
# (requirements-serverless.txt's direct pins) and tokenizers, which transformers 4.49 needs;
# what our code imports and upstream leaves unpinned (trimesh, pydantic; not urllib3: oci,
# through mosaicml-streaming, wants 2.8 where CI pins 2.3); and
# cryptography, which runpod 1.7.7 wants below 45; av, which our video decoding imports
# (pyproject.toml: av>=14) and upstream pins (requirements.txt:5, av==12.0.0) but never
# imports (`git grep "import av"` at SAM3D_COMMIT finds nothing). The image's build leaves
# these out of what SAM 3D Objects' layer holds; lock_server() proves the whole image
# still resolves.
OURS = {"diffusers", "transformers", "huggingface-hub", "accelerate", "safetensors", "tokenizers",
        "trimesh", "pydantic", "pydantic-core", "cryptography", "av"}
# Upstream requirements whose own requirements our layer breaks, each harmless: left out of
# lock_server()'s resolution, named by the image's `pip check` (DEPLOY.md says why).
KNOWN_CONFLICTS = {"optimum"}  # 1.18.1 wants transformers<4.40; nothing imports optimum
# Never moved to pip's choice: runpod 1.7.7 is the SDK the RunPod worker is tested with;
# onnxruntime-gpu is ONNXRUNTIME_GPU for its CUDA libraries.
FIXED = {"runpod", "onnxruntime-gpu"}


def dockerfile_arg(name: str) -> str:
    return re.search(rf"^ARG {name}=(\S+)", (ROOT / "Dockerfile").read_text(), re.M)[1]


def sam3d_requirements(git_dir: str, stack: str) -> tuple[list[str], set[str]]:
    """docker/sam3d_layer.py's requirements (what the image's `check` step resolves) of
    upstream's files at SAM3D_COMMIT with the stack's pins applied."""
    commit = dockerfile_arg("SAM3D_COMMIT")
    files = {name: subprocess.run(["git", "--git-dir", git_dir, "show", f"{commit}:{name}"],
                                  check=True, capture_output=True, text=True).stdout
             for name in REQUIREMENT_FILES}
    pins = ROOT / "docker" / f"{stack}-pins.txt"
    if pins.exists():
        files = repin(files, read_pins(pins.read_text()))
    with tempfile.TemporaryDirectory() as folder:
        for name, text in files.items():
            Path(folder, name).write_text(text)
        return layer_requirements(Path(folder))


class Conflict(Exception):
    """pip found no resolution. `blamed`: what blamed_in finds in its output."""

    def __init__(self, blamed: dict[str, tuple[str, str] | None], explanation: str):
        super().__init__(explanation)
        self.blamed = blamed


def blamed_in(output: str) -> dict[str, tuple[str, str] | None]:
    """Who pip's failed resolution blames: name -> (why, the package whose pinned version it
    excludes), or, where no line shows that, every package its explanation names (-> None).
    The explanation ("The conflict is caused by") names every requirement on the package in
    conflict, satisfiable or not (`runpod 1.7.7 depends on cryptography<45.0.0` beside
    `pyopenssl 26.4.0 depends on cryptography<51 and >=49.0.0`, with `(constraint)
    cryptography==44.0.3`): only those the pinned version fails are to blame. A blamed
    package pip chose freely (each version it tried failed) was narrowed by whoever
    required a range of it (`Collecting pyOpenSSL<27.0.0,>=26.2.0 (from oci<3,>=2.88->...`):
    those are blamed too."""
    from packaging.specifiers import SpecifierSet

    cause = output.partition("The conflict is caused by:")[2].partition("To fix")[0]
    pinned = {name_of(n): v for n, v in re.findall(r"\(constraint\) ([^=<>!\s]+)==(\S+)", cause)}
    needs = re.findall(r"^\s+(\S+) \S+ depends on ([\w.-]+)(?:\[[^\]]*\])?([^;\n]*)", cause, re.M)
    blamed = {}
    for who, needed, spec in needs:
        spec = spec.strip().replace(" and ", ",")
        if name_of(needed) in pinned and pinned[name_of(needed)] not in SpecifierSet(spec):
            blamed[name_of(who)] = (f"wants {needed}{spec}, {pinned[name_of(needed)]} pinned",
                                    name_of(needed))
    for name, (why, root) in list(blamed.items()):
        for wanted, requirer in re.findall(r"^Collecting ([\w.-]+[<>=!~]\S*) \(from ([\w.-]+)",
                                           output, re.M):
            if name_of(wanted) == name:
                blamed.setdefault(name_of(requirer), (f"wants {wanted}, which {why}", root))
    return blamed or {name_of(n): None for n in {who for who, _, _ in needs} | set(pinned)}


def resolve(requirements: list[str], constraints: list[Path] = ()) -> dict[str, str]:
    """pip's resolution (name -> version) of `requirements` for this interpreter, from PyPI."""
    with tempfile.TemporaryDirectory() as folder:
        listed, report = Path(folder, "in.txt"), Path(folder, "report.json")
        listed.write_text("\n".join(requirements) + "\n")
        done = subprocess.run([sys.executable, "-m", "pip", "install", "--progress-bar=off", "--dry-run",
                               "--ignore-installed", "--report", str(report), "-r", str(listed),
                               *(f"--constraint={path}" for path in constraints)],
                              capture_output=True, text=True)
        if done.returncode:
            output = done.stdout + done.stderr
            cause = output.partition("The conflict is caused by:")[2].partition("To fix")[0]
            raise Conflict(blamed_in(output), cause or output[-2000:])
        return {item["metadata"]["name"]: item["metadata"]["version"]
                for item in json.loads(report.read_text())["install"]}


def write_lock(path: Path, header: str, pins: dict[str, str]) -> None:
    lines = [f"{name}=={version}" for name, version in sorted(pins.items(), key=lambda p: p[0].lower())]
    path.write_text(header + "\n".join(lines) + "\n")
    print(f"{path.relative_to(ROOT)}: {len(lines)} pins")


def ci_versions(ci_python: str) -> dict[str, str]:
    """What CI's environment holds (the Makefile's: torch's CPU wheel, then the project with
    requirements-serverless.txt as constraints), less torch and the project itself, plus
    onnxruntime-gpu for rembg's `gpu` extra (ONNXRUNTIME_GPU)."""
    frozen = subprocess.run([ci_python, "-m", "pip", "freeze", "--exclude-editable"],
                            check=True, capture_output=True, text=True).stdout
    pins = dict(line.split("==") for line in frozen.splitlines() if "==" in line)
    pins.pop("torch", None)
    pins["onnxruntime-gpu"] = ONNXRUNTIME_GPU
    return pins


def server_requirements() -> list[str]:
    """What the image's server layer installs: pyproject.toml's dependencies, its serverless
    extra and rembg with its gpu extra (the segment extra, on the GPU)."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    rembg = [r for r in project["optional-dependencies"]["segment"] if name_of(r) == "rembg"]
    return (project["dependencies"] + project["optional-dependencies"]["serverless"]
            + [r.replace("rembg", "rembg[gpu]", 1) for r in rembg])


def read_lock(path: Path) -> dict[str, str]:
    return dict(line.split("==") for line in path.read_text().splitlines()
                if "==" in line and not line.startswith("#"))


def lock_sam3d(git_dir: str) -> None:
    for stack in STACKS:
        requirements, left_out = sam3d_requirements(git_dir, stack)
        pins = layer_pins(resolve(requirements), left_out)
        write_lock(ROOT / "docker" / f"sam3d-{stack}.lock",
                   f"# SAM 3D Objects' layer, CUDA_STACK={stack}: written by scripts/lock_image.py\n"
                   f"# (what it resolved, and what it leaves out: its docstring). Not in this\n"
                   f"# list: {', '.join(sorted(left_out))}, torch's nvidia-*/triton wheels.\n",
                   pins)


def lock_server(git_dir: str, ci_python: str) -> None:
    """server.lock, then the whole image resolved as it is built, for each stack: SAM 3D
    Objects' requirements (less KNOWN_CONFLICTS, and less its own pins of OURS, which our
    layer replaces: upstream's sam3d_objects then names them in `pip check`) and ours,
    constrained to server.lock and to what that layer holds less what server.lock pins (as
    the Dockerfile's /etc/sam3d-layer.txt is). Where pip finds none, what it blames
    (blamed_in) moves to pip's choice, pinned in server.lock and named in its header: CI's
    version of a package only our layer brings (prettytable 3.18 wants wcwidth>=0.3.5, the
    layer holds 0.2.14 for upstream's ftfy), or the layer's version of one that needs more
    than our pins allow (pyOpenSSL 26.4 wants cryptography>=49, ours is 44.0.3). Never OURS
    or FIXED."""
    held: dict[str, set[str]] = {}
    for stack in STACKS:
        for name, version in read_lock(ROOT / "docker" / f"sam3d-{stack}.lock").items():
            held.setdefault(name_of(name), set()).add(version)
    ci = ci_versions(ci_python)
    pins = {name: version for name, version in ci.items()
            if name_of(name) not in held or name_of(name) in OURS}
    moved: dict[str, str] = {}  # name -> what it was and why it moved, for the header
    for stack in STACKS:
        requirements, _ = sam3d_requirements(git_dir, stack)
        requirements = [r for r in requirements if name_of(r) not in KNOWN_CONFLICTS | OURS]
        layer_lock = read_lock(ROOT / "docker" / f"sam3d-{stack}.lock")
        while True:
            ours = {name_of(n) for n in pins} | OURS
            layer_pins = {name: version for name, version in layer_lock.items()
                          if name_of(name) not in ours and name not in moved}
            with tempfile.TemporaryDirectory() as folder:
                layer, server = Path(folder, "layer.txt"), Path(folder, "server.txt")
                layer.write_text("".join(f"{n}=={v}\n" for n, v in layer_pins.items()))
                server.write_text("".join(f"{n}=={v}\n" for n, v in pins.items()))
                try:
                    resolved = resolve(requirements + server_requirements(), [layer, server])
                    break
                except Conflict as conflict:
                    blamed = conflict.blamed
                    movable = {n for n in [*pins, *layer_pins]
                               if name_of(n) in blamed and name_of(n) not in OURS | FIXED
                               and (n in pins or blamed[name_of(n)] is not None
                                    and blamed[name_of(n)][1] in ours)}
                    if not movable:
                        raise
                    for name in sorted(movable):
                        why = blamed[name_of(name)]
                        was = f"CI {pins.pop(name)}" if name in pins else \
                            f"SAM 3D Objects' {layer_pins[name]}"
                        moved.setdefault(name, was + (f" {why[0]}" if why else ""))
                        print(f"{stack}: {name} ({moved[name]}) moves to pip's choice")
        chosen = {name_of(n): v for n, v in resolved.items()}
        for name in moved:
            if name_of(name) in chosen:
                pins.setdefault(name, chosen[name_of(name)])
        print(f"{stack}: the image resolves ({len(resolved)} packages)")

    def differing(names: set[str]) -> str:
        return "".join(f"#   {name} {'/'.join(sorted(held[name_of(name)]))}, CI {version}\n"
                       for name, version in sorted(ci.items()) if name_of(name) in names
                       and version not in held[name_of(name)])

    write_lock(ROOT / "docker" / "server.lock",
               "# Our layer of the image: the versions CI installs (the Makefile's environment,\n"
               "# requirements-serverless.txt as constraints) of every package SAM 3D Objects'\n"
               "# layer (docker/sam3d-*.lock) does not hold, and of OURS (scripts/lock_image.py,\n"
               "# which wrote this and resolved the whole image with it), which win over it.\n"
               "# Ours over SAM 3D Objects' (default/blackwell):\n" + differing(OURS & set(held))
               + "# Held at SAM 3D Objects' version (default/blackwell), not CI's:\n"
               + differing(set(held) - OURS)
               + "# pip's choice where the whole image did not resolve with its version (was; why):\n"
               + "".join(f"#   {name} {pins[name]} ({why})\n"
                         for name, why in sorted(moved.items()) if name in pins),
               pins)


if __name__ == "__main__":
    if sys.version_info[:2] != (3, 11):
        sys.exit("run with Python 3.11, the version of upstream's environment")
    arguments = [a for a in sys.argv[1:] if a != "--server-only"]
    if "--server-only" not in sys.argv:
        lock_sam3d(arguments[0])
    lock_server(arguments[0],
                arguments[1] if len(arguments) > 1 else str(ROOT / ".venv" / "bin" / "python"))
