"""The HTTP layer's shape (issue 30, "HTTP split by concern"): one module per concern under
api/, none importing one that imports it back, none over ~400 lines; nothing below the HTTP
layer calls back up into it; one error body and one Retry-After for the app and the front."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HTTP_LAYER = [ROOT / "app.py", *sorted((ROOT / "api").glob("*.py"))]


def _imports(path: Path) -> set[str]:
    """The api/ modules (and app) a module imports, by module name."""
    package = "api" if path.parent.name == "api" else ""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package if node.level else (node.module or "")
            if node.level and node.module:
                base = f"{package}.{node.module}"
            found |= {f"{base}.{alias.name}" for alias in node.names} | {base}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    names = {path.stem if path.parent == ROOT else f"api.{path.stem}" for path in HTTP_LAYER}
    return found & names


def test_the_http_layer_has_no_import_circle_and_no_module_over_400_lines():
    graph = {("app" if path.parent == ROOT else f"api.{path.stem}"): _imports(path)
             for path in HTTP_LAYER}

    def reaches(start: str, goal: str, seen: set) -> bool:
        return any(name == goal or (name not in seen and reaches(name, goal, seen | {name}))
                   for name in graph.get(start, ()))

    circles = [name for name in graph if reaches(name, name, set())]
    assert circles == []
    long = {path.name: n for path in HTTP_LAYER if (n := len(path.read_text().splitlines())) > 400}
    assert long == {}


def test_webhooks_and_event_streams_read_the_status_json_without_the_http_layer():
    """A job's status JSON (api/views.py) is what GET /job/<id> answers, its event stream
    sends and its webhooks POST; reading it loads neither the app nor Flask, and neither
    webhooks nor the event stream is handed a callback into the routes."""
    probe = """
import inspect, json, sys
import front.events, webhooks
print(json.dumps({
    "loaded": sorted(m for m in sys.modules if m in ("app", "flask", "api.context")),
    "sender": list(inspect.signature(webhooks.WebhookSender).parameters),
    "events": list(inspect.signature(front.events.JobEvents).parameters)}))
"""
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found == {"loaded": [], "sender": ["secret", "allow_private", "delays", "post"],
                     "events": ["queue", "job_id"]}


def test_the_front_refuses_with_the_apps_error_body_and_retry_after(make_client):
    """A refusal the front gives itself (front/asgi.py) and one the app gives (a job that is
    not there) carry the same body shape and the same Retry-After (api/errors.py)."""
    from api.errors import RETRY_AFTER_SECONDS
    from front.asgi import error_answer

    front = error_answer(503, "too many connections from one address", retry_after=True)
    headers = dict(front.headers)
    assert json.loads(front.body) == {"error": "too many connections from one address"}
    assert headers[b"retry-after"].decode() == RETRY_AFTER_SECONDS
    answer = make_client({}).get("/job/" + "0" * 32)
    assert answer.status_code == 404 and answer.get_json() == {"error": "job not found"}


BELOW_THE_ANSWERS = [ROOT / "queue_manager.py",
                     *sorted(path for folder in ("pipelines", "workers", "jobs")
                             for path in (ROOT / folder).rglob("*.py"))]


def test_models_workers_and_the_queue_say_a_failures_kind_never_an_http_status():
    """Issue 30: "Models choose HTTP statuses". They raise a kind (pipelines/errors.py); only
    the answering layers (api/, handler.py) turn a kind into a status, by STATUS_OF. Below
    them: no `status=` argument, no `.status` read off an error, no STATUS_OF."""
    found = []
    for path in BELOW_THE_ANSWERS:
        for node in ast.walk(ast.parse(path.read_text())):
            where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.keyword) and node.arg in ("status", "error_status"):
                found.append(f"{where} status= argument")
            elif isinstance(node, ast.Name) and node.id == "STATUS_OF" and \
                    path.name != "errors.py":
                found.append(f"{where} STATUS_OF")
            elif isinstance(node, ast.Attribute) and node.attr in ("status", "error_status") \
                    and not (isinstance(node.value, ast.Name) and node.value.id == "response"):
                found.append(f"{where} .{node.attr}")
    assert found == []
