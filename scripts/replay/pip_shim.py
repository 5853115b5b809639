"""`pip` for scripts/replay_image.py: what the Dockerfile's steps call as `pip`, on a machine
where the image's GBs of wheels are not installed. Run with the replay's Python 3.11 venv
(the image's pip 25.0.1), it hands every `pip install` to that real pip as a resolution
(`--dry-run --report`: the same resolver, constraints, indexes and metadata; no wheel is
downloaded or installed) and keeps what each step would have installed in a state file, from
which `freeze`, `uninstall` and `check` answer as pip does in the image:

  install    the real pip 25.0.1, plus --dry-run --ignore-installed --report: every step is
             constrained to a lock, so a fresh resolution picks what the image's step keeps
             or installs. The build tools a step would install (setuptools, wheel, Cython,
             ninja) are installed for real, since later steps build with them. GitHub requirements (git+https://github.com/...@COMMIT) are pointed
             at stand-ins built from docker/declared-requires.txt; indexes this machine cannot
             reach (NGC, PyTorch, NVIDIA's kaolin bucket) are dropped (PyPI gives the same
             torch versions: `==2.5.1+cu121` is asked for as `==2.5.1`; the stand-in folder
             gives the kaolin wheel).
  freeze     name==version of everything the steps installed (`name @ url` for a direct one;
             --exclude-editable leaves out editable ones), as pip freeze writes them.
  uninstall  forgets the names.
  check      pip check's test (each installed distribution's Requires-Dist, markers evaluated
             with no extra, against the installed versions) over the metadata pip reported.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from pip._vendor.packaging.markers import default_environment
from pip._vendor.packaging.requirements import Requirement
from pip._vendor.packaging.utils import canonicalize_name
from pip._vendor.packaging.version import Version

STATE = Path(os.environ["REPLAY_STATE"])
STANDINS = Path(os.environ["REPLAY_STANDINS"])
GIT = re.compile(r"git\+https://github\.com/([\w.-]+)/([\w.-]+?)(?:\.git)?@([0-9a-f]{7,40})")
BUILD_TOOLS = {"setuptools", "wheel", "cython", "ninja", "packaging"}
REACHABLE = ("https://pypi.org", "https://files.pythonhosted.org", "file:", "/")


def installed() -> dict[str, dict]:
    path = STATE / "installed.json"
    return json.loads(path.read_text()) if path.exists() else {}


def save(state: dict[str, dict]) -> None:
    (STATE / "installed.json").write_text(json.dumps(state, indent=1, sort_keys=True))


def standin_for(match: re.Match) -> str:
    """The stand-in for a GitHub requirement: the metadata wheel named for the repository,
    or a source tree at that commit (a git kaolin, which pip builds from source)."""
    folder = STANDINS / f"git-{match[2].lower()}"
    found = sorted(folder.glob("*.whl")) + [tree for tree in folder.glob("*")
                                            if tree.is_dir() and match[3].startswith(tree.name)]
    if not found:
        sys.exit(f"replay: no stand-in for {match[0]} (docker/declared-requires.txt)")
    return found[0].resolve().as_uri()


def point_at_standins(text: str) -> str:
    """GitHub requirements -> their stand-ins; `==2.5.1+cu121` (PyTorch's index only) ->
    `==2.5.1`, PyPI's build of the same release, with the same requirements."""
    return re.sub(r"(==[\d.]+)\+cu\d+\b", r"\1", GIT.sub(standin_for, text))


def reachable(urls: str) -> str:
    kept = [url for url in urls.split() if url.startswith(REACHABLE)]
    dropped = [url for url in urls.split() if url not in kept]
    if dropped:
        print(f"replay: not reachable here, left out: {' '.join(dropped)}", file=sys.stderr)
    return " ".join(kept)


def install(args: list[str]) -> int:
    # the requirement files a `-e DIR[extra]` reads (hatch-requirements-txt) and the arguments
    for arg in args:
        folder = Path(arg.split("[")[0])
        if arg.split("[")[0] in (".",) or (folder.is_dir() and (folder / "pyproject.toml").exists()):
            for requirements in folder.glob("requirements*.txt"):
                requirements.write_text(point_at_standins(requirements.read_text()))
    args = [point_at_standins(arg) for arg in args]
    env = dict(os.environ)
    for name in ("PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_INDEX_URL"):
        if name in env:
            env[name] = reachable(env[name])
    env["PIP_FIND_LINKS"] = " ".join(filter(None, [env.get("PIP_FIND_LINKS", ""), str(STANDINS)]))
    step = len(list(STATE.glob("report-*.json")))
    report = STATE / f"report-{step:02d}.json"
    done = subprocess.run([sys.executable, "-m", "pip", "install", *args, "--dry-run",
                           "--ignore-installed", "--progress-bar=off", "--report", str(report)],
                          env=env, capture_output=True, text=True)
    output = "\n".join(line for line in (done.stdout + done.stderr).splitlines()
                       if "is ignored: it is neither a file nor a directory" not in line)
    if done.returncode:
        print(output[-6000:], file=sys.stderr)
        return done.returncode
    state = installed()
    items = json.loads(report.read_text())["install"]
    for item in items:
        meta = item["metadata"]
        info = item.get("download_info", {})
        state[canonicalize_name(meta["name"])] = {
            "name": meta["name"], "version": meta["version"],
            "requires": meta.get("requires_dist", []),
            "editable": bool(info.get("dir_info", {}).get("editable")),
            "url": info.get("url") if item.get("is_direct") else None}
    save(state)
    # The build tools a step leaves in the environment build the next step's source packages
    # (pip runs a setup.py-only project's `setup.py egg_info` with them): those are installed
    # for real, at the versions the step chose (the lock's setuptools drops pkg_resources).
    tools = [f"{i['metadata']['name']}=={i['metadata']['version']}" for i in items
             if canonicalize_name(i["metadata"]["name"]) in BUILD_TOOLS]
    if tools:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", *tools],
                       env=env, check=True)
        print(f"replay: installed for real (build tools): {' '.join(tools)}")
    print(f"replay: pip install {' '.join(args)}: resolves, {len(items)} to install "
          f"({', '.join(sorted(i['metadata']['name'] + '==' + i['metadata']['version'] for i in items))[:300]}...)")
    return 0


def freeze(args: list[str]) -> int:
    for key, dist in sorted(installed().items()):
        if dist["editable"] and "--exclude-editable" in args:
            continue
        print(f"{dist['name']} @ {dist['url']}" if dist["url"] else
              f"{dist['name']}=={dist['version']}")
    return 0


def uninstall(args: list[str]) -> int:
    state = installed()
    for name in (a for a in args if not a.startswith("-")):
        if state.pop(canonicalize_name(name), None):
            print(f"  Successfully uninstalled {name}")
        else:
            print(f"WARNING: Skipping {name} as it is not installed.")
    save(state)
    return 0


def check(args: list[str]) -> int:
    state, problems = installed(), []
    environment = default_environment()
    for key, dist in sorted(state.items()):
        for line in dist["requires"]:
            requirement = Requirement(line)
            if requirement.marker and not requirement.marker.evaluate({**environment, "extra": ""}):
                continue
            have = state.get(canonicalize_name(requirement.name))
            if have is None:
                problems.append(f"{dist['name']} {dist['version']} requires "
                                f"{requirement.name}, which is not installed.")
            elif not requirement.specifier.contains(Version(have["version"]), prereleases=True):
                problems.append(f"{dist['name']} {dist['version']} has requirement {requirement},"
                                f" but you have {have['name']} {have['version']}.")
    print("\n".join(problems) if problems else "No broken requirements found.")
    return 1 if problems else 0


def main(argv: list[str]) -> int:
    command, args = (argv[0], argv[1:]) if argv else ("", [])
    handlers = {"install": install, "freeze": freeze, "uninstall": uninstall, "check": check}
    if command not in handlers:
        sys.exit(f"replay: `pip {' '.join(argv)}` is not a step the image runs")
    return handlers[command](args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
