"""The server as a supervisor and a terminal run it: after kill -9 of the gunicorn master no
process of it lives on, and the restart comes up on the same port and folder; Ctrl-C (SIGINT
to the process group) stops it as gently as SIGTERM; it listens on 127.0.0.1 unless HOST
says otherwise, and says where."""

from __future__ import annotations

import os
import signal
import socket

import psutil
import pytest
import requests

from conftest import image_b64, running_server, wait_until
from test_e2e import poll


def family(pid: int) -> list[psutil.Process]:
    """The gunicorn master's descendants: its HTTP worker and the model processes."""
    return psutil.Process(pid).children(recursive=True)


def gone(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_after_kill_9_of_the_master_nothing_lives_on_and_a_restart_comes_up(tmp_path,
                                                                             checkpoints):
    """What a supervisor does after a crash of the master: start the same command again,
    same port, same OUTPUT_DIR. An orphaned worker used to keep answering /health, holding
    the port ("Connection in use") and OUTPUT_DIR's lock."""
    port = str(free_port())
    with running_server(tmp_path, checkpoints, PORT=port) as started:
        processes = family(started["pid"])
        assert len(processes) >= 2, processes  # the HTTP worker and a model process
        accepted = requests.post(f"{started['url']}/depth", json={
            "image": image_b64()}, timeout=30).json()["job_id"]
        assert poll(started["url"], accepted)["status"] == "completed"
        os.kill(started["pid"], signal.SIGKILL)
        started["process"].wait(10)
        wait_until(lambda: all(gone(process) for process in processes), timeout=45,
                   interval=0.2)
    with running_server(tmp_path, checkpoints, PORT=port) as again:
        assert again["url"] == started["url"]
        assert requests.get(f"{again['url']}/job/{accepted}", timeout=5).json()["status"] \
            == "completed"  # the same folder, its results kept


def running_job(base: str) -> str:
    """A depth job that takes seconds to minutes on a CPU, once the model process reports
    running it (not the queue's "starting")."""
    import base64

    from conftest import image_bytes

    photo = base64.b64encode(image_bytes(width=512, height=384)).decode()
    job = requests.post(f"{base}/depth", json={"image": photo, "processing_res": 1024},
                        timeout=60).json()["job_id"]
    wait_until(lambda: (lambda status: status["status"] == "processing"
                        and status["stage"] != "starting")(
        requests.get(f"{base}/job/{job}", timeout=5).json()), timeout=120, interval=0.1)
    return job


def test_ctrl_c_lets_the_running_job_finish_like_sigterm(tmp_path, checkpoints):
    """A terminal's Ctrl-C: SIGINT to every process of the group, master, HTTP worker and
    model processes alike. The model process used to die of KeyboardInterrupt mid-job."""
    with running_server(tmp_path, checkpoints, new_session=True) as started:
        slow = running_job(started["url"])
        waiting = requests.post(f"{started['url']}/depth", json={"image": image_b64()},
                                timeout=30).json()["job_id"]
        os.killpg(started["pid"], signal.SIGINT)
        started["process"].wait(60)
        log = started["log"].read_text()
    assert "KeyboardInterrupt" not in log and "Traceback" not in log, log[-3000:]
    with running_server(tmp_path, checkpoints) as again:
        # finished in the graceful period, or (a slow machine) handed back and run now
        status = poll(again["url"], slow, timeout=240)
        assert status["status"] == "completed", status
        assert poll(again["url"], waiting, timeout=120)["status"] == "completed"


def listening_addresses(port: int) -> set[str]:
    return {connection.laddr.ip for connection in psutil.net_connections("tcp")
            if connection.status == psutil.CONN_LISTEN and connection.laddr.port == port}


@pytest.mark.parametrize("host, expected", [(None, "127.0.0.1"), ("0.0.0.0", "0.0.0.0")])
def test_the_server_listens_on_loopback_unless_host_says_otherwise(tmp_path, checkpoints,
                                                                   host, expected):
    env = {"HOST": host} if host else {}
    os.environ.pop("HOST", None)
    with running_server(tmp_path, checkpoints, **env) as started:
        port = int(started["url"].rsplit(":", 1)[1])
        assert listening_addresses(port) == {expected}
        assert f"Listening at: http://{expected}:{port}" in started["log"].read_text()


def test_host_defaults_to_loopback_for_every_entry_point(monkeypatch):
    """gunicorn.conf.py binds Settings.bind, app.py's development server Settings.host."""
    from settings import load_settings

    monkeypatch.delenv("HOST", raising=False)
    monkeypatch.delenv("PORT", raising=False)
    assert load_settings().bind == "127.0.0.1:8000"
    monkeypatch.setenv("HOST", "::1")
    assert load_settings().bind == "[::1]:8000"
    monkeypatch.setenv("HOST", "0.0.0.0; rm -rf /")
    with pytest.raises(Exception, match="HOST|host"):
        load_settings()
