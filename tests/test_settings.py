"""Settings: defaults of the guide, and a bad value stops the server with one clear line."""

import logging
import os
import re
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT
from pipelines.outputs import atomic_write
from settings import Settings, SettingsError, load_settings


def test_defaults_are_the_guides(monkeypatch):
    for name in ("PORT", "MAX_CONCURRENT", "MAX_QUEUE_SIZE", "API_KEY", "LOTUS_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings()
    assert (settings.port, settings.max_concurrent, settings.max_queue_size) == (8000, 1, 10)
    assert (settings.result_ttl_seconds, settings.sync_timeout_seconds) == (3600, 600)
    assert settings.max_content_length >= 4096 * 4096 * 3 * 4 // 3
    assert settings.required_api_key is None and settings.allow_private_urls is False


@pytest.mark.parametrize("name, value", [
    ("PORT", "eighty"), ("MAX_CONCURRENT", "0"), ("MAX_QUEUE_SIZE", "-1"),
    ("RESULT_TTL_SECONDS", "0"), ("PIPELINES", "sam3d,dalle"), ("ALLOW_PRIVATE_URLS", "maybe"),
])
def test_invalid_values_name_the_variable(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=f"invalid {name}="):
        load_settings()


@pytest.mark.parametrize("command", [["app.py"], ["-m", "gunicorn", "-c", "gunicorn.conf.py"]],
                         ids=["python app.py", "gunicorn"])
def test_the_server_refuses_to_start_with_one_line_naming_the_variable(command):
    env = {**os.environ, "MAX_CONCURRENT": "zero"}
    done = subprocess.run([sys.executable, *command], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines == [lines[0]] and lines[0].startswith("error: invalid MAX_CONCURRENT='zero'")


def test_an_open_server_warns_at_start(make_client, scripted, caplog, monkeypatch):
    monkeypatch.delenv("API_KEY", raising=False)
    monkeypatch.delenv("LOTUS_API_KEY", raising=False)
    with caplog.at_level(logging.WARNING):
        make_client({"lotus": scripted})
    assert "API_KEY is not set" in caplog.text


def test_atomic_write_leaves_nothing_behind_when_writing_fails(tmp_path):
    def broken(path):
        path.write_bytes(b"half a fi")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(tmp_path / "result.glb", broken)
    assert list(tmp_path.iterdir()) == []
    atomic_write(tmp_path / "result.glb", lambda path: path.write_bytes(b"whole"))
    assert [p.name for p in tmp_path.iterdir()] == ["result.glb"]


def test_gunicorns_master_and_a_plain_import_never_load_torch_or_start_the_app():
    """Models and CUDA belong to the worker process: gunicorn.conf.py (run by the master)
    must not import torch, and `import app` must not build the app or start a thread."""
    probe = """
import runpy, sys, threading
runpy.run_path("gunicorn.conf.py")
assert "torch" not in sys.modules, "torch imported in the master"
import app
assert "app" not in vars(app), "the app was built at import"
assert threading.active_count() == 1, threading.enumerate()
print("ok")
"""
    env = {key: value for key, value in os.environ.items() if key != "MAX_CONCURRENT"}
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_api_keys_are_trimmed_with_a_warning(monkeypatch, caplog):
    from settings import load_settings

    monkeypatch.setenv("API_KEY", "s3cret\n")
    monkeypatch.setenv("LOTUS_API_KEY", "   ")
    settings = load_settings()
    assert settings.required_api_key == "s3cret" and settings.lotus_api_key is None
    assert "API_KEY has leading or trailing whitespace" in caplog.text


def documented() -> dict[str, str]:
    """.env.example's `# NAME=default` lines."""
    text = (ROOT / ".env.example").read_text()
    return dict(re.findall(r"^# ?([A-Z][A-Z0-9_]*)=(.*)$", text, re.MULTILINE))


def compose_environment() -> dict[str, str]:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return compose["services"]["sam3d-objects"]["environment"]


@pytest.mark.parametrize("where", [".env.example", "docker-compose.yml"])
def test_every_setting_can_be_set_through_compose_and_is_documented(where):
    """A setting added to settings.py but not to .env.example and the compose file fails."""
    names = {name.upper() for name in Settings.model_fields}
    listed = set(documented() if where == ".env.example" else compose_environment())
    assert not names - listed, f"{where} lacks {sorted(names - listed)}"
    assert not listed - names, f"{where} names unknown {sorted(listed - names)}"


def test_compose_passes_each_variable_under_its_own_name():
    for name, value in compose_environment().items():
        assert re.fullmatch(rf"\$\{{{name}:-[^}}]*\}}", value), f"{name}: {value}"


def test_the_documented_defaults_are_the_servers(monkeypatch):
    for name in {*documented(), *(field.upper() for field in Settings.model_fields)}:
        monkeypatch.delenv(name, raising=False)
    for name, value in documented().items():
        field = name.lower()
        default = Settings.model_fields[field].default
        if value == "":
            assert default in (None, ""), f"{name} defaults to {default!r}, documented blank"
            continue
        with monkeypatch.context() as env:
            env.setenv(name, value)
            assert getattr(load_settings(), field) == default, f"{name}={value}"


def test_a_blank_variable_means_the_default(monkeypatch):
    """What compose passes for a setting neither .env nor the shell sets."""
    for name in ("PORT", "SAM3D_VRAM_GIB", "MODEL_PROCESS", "API_KEY", "SAM3D_OFFLOAD"):
        monkeypatch.setenv(name, "")
    settings = load_settings()
    assert (settings.port, settings.sam3d_vram_gib, settings.model_process) == (8000, None, True)
    assert settings.required_api_key is None and settings.sam3d_offload == "auto"
