"""Issue 30, "A model is a package": each model's code under pipelines/ imports on its own
(no import circle, whichever module is imported first), no module is over ~400 lines, and
the class paths an earlier release's journal names still resolve."""

import importlib
import json
import subprocess
import sys

from conftest import ROOT

MODULES = sorted(".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
                 for path in (ROOT / "pipelines").rglob("*.py"))


def test_every_pipelines_module_imports_first_without_a_circle():
    """Each module imported as the first of ours in the interpreter (torch and the other
    libraries stay loaded between them, so the run is quick): a circle breaks the one
    imported first, e.g. pipelines.models when the Lotus package imported its request
    eagerly (pipelines/lotus/__init__.py)."""
    probe = f"""
import importlib, json, sys
failed = {{}}
for name in {MODULES!r}:
    for loaded in [m for m in sys.modules if m == "pipelines" or m.startswith("pipelines.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception as exc:
        failed[name] = f"{{type(exc).__name__}}: {{exc}}"
print(json.dumps(failed))
"""
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "pipelines.lotus.request" in MODULES and "pipelines.sam3d_parts.masks" in MODULES
    assert json.loads(done.stdout.splitlines()[-1]) == {}


def test_no_pipelines_module_is_over_400_lines():
    long = {str(path.relative_to(ROOT)): n for path in (ROOT / "pipelines").rglob("*.py")
            if (n := len(path.read_text().splitlines())) > 400}
    assert long == {}


def test_the_class_paths_journal_rows_name_resolve():
    """The previous release's rows name `pipelines.lotus:DepthRequest` (and the other two);
    today's rows name the class's own module (jobs/journal.py writes `__module__`). Both
    are one class. SAM 3D's front stays the file the SAM 3D CPU kit imports."""
    def resolve(path):
        module, _, name = path.partition(":")
        return getattr(importlib.import_module(module), name)

    from pipelines.lotus import DepthRequest, NormalRequest
    from pipelines.sam3d import GenerateRequest

    for cls, old in ((DepthRequest, "pipelines.lotus:DepthRequest"),
                     (NormalRequest, "pipelines.lotus:NormalRequest"),
                     (GenerateRequest, "pipelines.sam3d:GenerateRequest")):
        assert resolve(old) is cls
        assert resolve(f"{cls.__module__}:{cls.__qualname__}") is cls
    assert (ROOT / "pipelines" / "sam3d.py").is_file()
    assert not (ROOT / "pipelines" / "sam3d").exists()  # a package would shadow the file
