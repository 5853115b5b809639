"""README.md and DEPLOY.md say what the code does: the /health example, what each card size
serves, curl lines that stop on an error."""

import json
import re
import subprocess
import sys

import pytest

from conftest import ROOT
from pipelines.sam3d_parts.memory import MEMORY_NEEDED_GIB, MEMORY_NEEDED_GIB_OFFLOAD, \
    offload_wanted, servable_outputs
from schemas import Health
from workers.pool import ESTIMATED_GIB

DEPLOY = (ROOT / "DEPLOY.md").read_text()


def test_the_health_example_is_what_the_server_answers():
    example = re.search(r"### Health check\n.*?```json\n(.*?)```", DEPLOY, re.DOTALL)[1]
    body = json.loads(example)
    assert list(body) == list(Health.model_fields)
    Health.model_validate(body)


def test_each_card_size_serves_what_the_requirements_say():
    """Requirements' table, through the admission code (`auto` mode) at the GiB cards report."""
    def served(vram_gib):
        return servable_outputs(vram_gib, offload_wanted("auto", vram_gib))

    assert all(served(39.6).values()) and not offload_wanted("auto", 39.6)  # 40 GB A100
    assert all(served(22.5).values()) and offload_wanted("auto", 22.5)  # 24 GB L4, A10
    assert served(15.6) == {"ply": True, "glb": True, "glb_textured": False}  # 16 GB
    assert not any(served(13.5).values())
    # beside Lotus-D (fp16, counted at its estimate until measured: workers/pool.py)
    lotus = ESTIMATED_GIB[("lotus", True)]
    assert all(served(31.4 - lotus).values()) and offload_wanted("auto", 31.4 - lotus)  # 5090
    assert served(23.6 - lotus) == {"ply": True, "glb": True, "glb_textured": False}  # 4090
    assert not any(served(15.6 - lotus).values())  # 16 GB
    rows = {line.split("|")[1].strip(): line for line in DEPLOY.splitlines()
            if line.startswith("  | ") and "GiB reported" in line}
    assert "textured outputs get 507" in rows["24 GB (RTX 3090/4090, A10, L4: 22-24 GiB reported)"]
    assert "beside Lotus: none (every `/generate` gets 507). Alone: PLY, vertex-colour GLB" in \
        rows["16 GB (15-16 GiB reported)"]
    assert f"about {lotus:g} GiB *estimated*" in DEPLOY


def test_the_admission_figures_in_deploy_are_the_codes():
    smaller = DEPLOY[DEPLOY.index("### Smaller GPUs"):]
    assert f"| PLY, GLB with vertex colours | {MEMORY_NEEDED_GIB_OFFLOAD['glb']:g} GiB |" in smaller
    assert f"| GLB, OBJ, USDZ textured | {MEMORY_NEEDED_GIB_OFFLOAD['glb_textured']:g} GiB |" in smaller
    assert MEMORY_NEEDED_GIB_OFFLOAD["ply"] == MEMORY_NEEDED_GIB_OFFLOAD["glb"]
    whole = DEPLOY[DEPLOY.index("## GPU memory requirements"):DEPLOY.index("### Smaller GPUs")]
    for need in MEMORY_NEEDED_GIB.values():
        assert f"| {need:g} GiB |" in whole
    textured = MEMORY_NEEDED_GIB_OFFLOAD["glb_textured"]
    assert f"textured outputs get 507 (they need {textured:g} GiB)" in DEPLOY


def commands(text: str, program: str) -> list[str]:
    """Each `program` command in the fenced code blocks of `text`, its continued lines joined."""
    found = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.DOTALL):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            if line.strip().startswith(program + " "):
                found.append(line.strip())
    return found


def test_every_curl_line_that_writes_a_file_fails_on_an_error():
    """Without --fail-with-body, curl writes an error's JSON under the result's name and
    exits 0: a script goes on with a 71-byte "model.ply"."""
    writes = [line for name in ("README.md", "DEPLOY.md")
              for line in commands((ROOT / name).read_text(), "curl")
              if re.search(r"\s(-o|--output)\s|\s>\s*\S", line)]
    assert len(writes) >= 10  # the README's and DEPLOY's downloads are found
    assert [line for line in writes if "--fail-with-body" not in line] == []


def test_the_readme_names_the_open_endpoints_the_app_leaves_open():
    import app

    row = next(line for line in (ROOT / "README.md").read_text().splitlines()
               if line.startswith("| `API_KEY`"))
    named = set(re.findall(r"`(/[a-z/]*)`", row))
    assert named == set(app.OPEN_PATHS) | set(app.OPEN_PREFIXES), row


def test_every_test_file_the_docs_name_exists():
    docs = [ROOT / "README.md", ROOT / "DEPLOY.md", *ROOT.glob("tests/**/README.md")]
    named = {path for doc in docs for path in re.findall(r"tests/[\w/]+\.py", doc.read_text())}
    assert named and [path for path in sorted(named) if not (ROOT / path).is_file()] == []


def test_python_app_py_without_the_packages_says_what_to_run():
    """The README offers `python app.py`: in a Python without the server's packages, a line
    that says what to do, not a traceback (PIL hidden, as a bare system Python lacks it)."""
    ran = subprocess.run([sys.executable, "-c", "import runpy, sys; sys.modules['PIL'] = None; "
                          "runpy.run_path('app.py', run_name='__main__')"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert ran.returncode == 1 and "Traceback" not in ran.stderr, ran.stderr
    assert "run `make serve`, or activate .venv" in ran.stderr


def test_make_serve_installs_what_serving_needs_and_make_test_the_rest():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    serve = subprocess.run(["make", "-n", "serve", "VENV=/nonexistent/venv"], cwd=ROOT,
                           capture_output=True, text=True, timeout=30).stdout
    test = subprocess.run(["make", "-n", "test", "VENV=/nonexistent/venv"], cwd=ROOT,
                          capture_output=True, text=True, timeout=30).stdout
    assert "-e '.[serve]'" in serve and "test" not in re.findall(r"-e '\.\[(.*?)\]'", serve)[0]
    assert "-e '.[serve,test,serverless]'" in test
    assert "selenium" not in str(extras["serve"]) and "runpod" not in str(extras["serve"])
    steps = [line for line in serve.splitlines() if line.startswith("echo \"==>")]
    assert len(steps) >= 3  # each step says what it does before pip's quiet run
