"""The HTTP front against slow, many and odd clients: the real gunicorn server on a loopback
port (front.worker.FrontWorker), driven through raw sockets where a client misbehaves.

No timed assertion is tight: a 2-core CI machine runs the load beside the server. The
figures (p50/p99/max of /health beside the old gthread worker) are bench/slow_clients.py's.
"""

import base64
import json
import re
import socket
import time

import pytest
import requests

from conftest import image_bytes, running_server, slow_depth_job, wait_until
from front.budgets import Limits

STREAMS, SLOW_BODIES, SLOW_HEADERS = 300, 170, 64


@pytest.fixture(scope="module")
def server(tmp_path_factory, checkpoints):
    # one model thread: the slow job below leaves the second core to the server and load
    with running_server(tmp_path_factory.mktemp("server"), checkpoints,
                        OMP_NUM_THREADS="1") as started:
        started["port"] = int(started["url"].rsplit(":", 1)[1])
        yield started


@pytest.fixture(scope="module")
def running_job(server):
    """A depth job that runs for minutes on one CPU thread, for the tests' event streams;
    force-cancelled when the module's tests are done."""
    base = server["url"]
    job = slow_depth_job(base, 3072)
    yield job
    requests.delete(f"{base}/job/{job}?force=true", timeout=10)


def connect(server) -> socket.socket:
    connection = socket.create_connection(("127.0.0.1", server["port"]))
    connection.settimeout(5)
    return connection


def read_all(connection: socket.socket) -> bytes:
    """Everything until the server closes the connection (or 5 s of silence)."""
    data = b""
    try:
        while chunk := connection.recv(65536):
            data += chunk
    except socket.timeout:
        return data + b"<still open>"
    return data


def open_gauge(server, name: str) -> float:
    text = requests.get(f"{server['url']}/metrics", timeout=5).text
    return float(re.search(rf"^sam3d_http_{name} (\S+)$", text, re.M)[1])


def health_seconds(server) -> float:
    started = time.monotonic()
    assert requests.get(f"{server['url']}/health", timeout=5).status_code == 200
    return time.monotonic() - started


def test_every_answer_says_how_browsers_may_use_it(server):
    base = server["url"]
    photo = base64.b64encode(image_bytes()).decode()
    job = requests.post(f"{base}/depth", json={"image": photo, "processing_res": 32},
                        timeout=30).json()["job_id"]
    wait_until(lambda: requests.get(f"{base}/job/{job}", timeout=5).json()["status"]
               == "completed", timeout=60)
    for path in ("/", f"/job/{job}", f"/job/{job}/download", "/job/nope"):
        headers = requests.get(base + path, timeout=10).headers
        assert headers["X-Content-Type-Options"] == "nosniff", path
        assert headers["X-Frame-Options"] == "DENY" and headers["Referrer-Policy"], path
        assert "frame-ancestors 'none'" in headers["Content-Security-Policy"], path


def test_streams_slow_bodies_and_slow_headers_at_once_leave_health_fast(server, running_job):
    streams = [connect(server) for _ in range(STREAMS)]
    bodies = [connect(server) for _ in range(SLOW_BODIES)]
    headers = [connect(server) for _ in range(SLOW_HEADERS)]
    try:
        for connection in streams:
            connection.sendall(f"GET /job/{running_job}/events HTTP/1.1\r\nHost: x\r\n\r\n"
                               .encode())
        for connection in bodies:
            connection.sendall(b"POST /depth HTTP/1.1\r\nHost: x\r\nContent-Type: "
                               b"application/json\r\nContent-Length: 100000\r\n\r\n{")
        for connection in headers:
            connection.sendall(b"GET /health HTTP/1.1\r\n")
        slowest = 0.0
        for _ in range(4):  # each slow client sends a byte a second
            time.sleep(1)
            for connection in bodies + headers:
                try:
                    connection.sendall(b"X")
                except OSError:  # refused over its budget, and closed by the server
                    pass
            slowest = max(slowest, *(health_seconds(server) for _ in range(5)))
        assert slowest < 1.0, f"/health took {slowest:.2f} s"
        assert open_gauge(server, "event_streams_open") == Limits().streams_per_ip
        assert open_gauge(server, "connections_awaiting_headers") >= SLOW_HEADERS
    finally:
        for connection in streams + bodies + headers:
            connection.close()


def test_streams_past_the_cap_are_refused_with_json_and_closed_ones_are_dropped(
        server, running_job):
    cap = Limits().streams_per_ip
    streams = [connect(server) for _ in range(cap + 5)]
    for connection in streams:
        connection.sendall(f"GET /job/{running_job}/events HTTP/1.1\r\nHost: x\r\n\r\n"
                           .encode())
    wait_until(lambda: open_gauge(server, "event_streams_open") == cap, timeout=10)
    firsts = [connection.recv(65536) for connection in streams]
    open_ones = [first for first in firsts if first.startswith(b"HTTP/1.1 200")]
    refused = [first + read_all(connection) for first, connection in zip(firsts, streams)
               if first.startswith(b"HTTP/1.1 429")]
    assert len(open_ones) == cap and len(refused) == 5
    for answer in refused:
        head, body = answer.split(b"\r\n\r\n", 1)
        assert b"retry-after: 10" in head.lower() and not body.endswith(b"<still open>")
        assert "too many event streams" in json.loads(body)["error"]
    for connection in streams:
        connection.close()  # the clients go away while the job runs on
    started = time.monotonic()
    wait_until(lambda: open_gauge(server, "event_streams_open") == 0, timeout=5)
    assert time.monotonic() - started < 5


def parse_answers(data: bytes) -> list[tuple[int, bytes]]:
    """HTTP/1.1 answers with Content-Length, one after another: (status, body) each."""
    answers = []
    while data.startswith(b"HTTP/1.1 "):
        head, data = data.split(b"\r\n\r\n", 1)
        length = int(re.search(rb"content-length: (\d+)", head, re.I)[1])
        answers.append((int(head[9:12]), data[:length]))
        data = data[length:]
    return answers


def test_pipelined_requests_are_answered_in_order(server):
    paths = ["/livez", "/job/" + "0" * 32, "/queue", "/livez", "/nowhere", "/readyz"]
    with connect(server) as connection:
        connection.sendall(b"".join(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
                                    for path in paths)
                           + b"GET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answers = parse_answers(read_all(connection))
    assert [status for status, _ in answers] == [200, 404, 200, 200, 404, 200, 200]
    assert json.loads(answers[0][1]) == {"alive": True}
    assert json.loads(answers[1][1])["error"] == "job not found"
    assert "max_queue_size" in json.loads(answers[2][1])
    assert "ready" in json.loads(answers[5][1])


@pytest.mark.parametrize("request_bytes", [
    b"GET /livez HTTP/1.1\nHost: x\n\n",  # bare LF line endings
    b"POST /depth HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked"
    b"\r\n\r\n0\r\n\r\n",  # two framings at once: a request smuggler's
    b"GET /livez HTTP/1.1\r\nHost: x\r\nX-API-Key secret\r\n\r\n",  # a header without a colon
])
def test_malformed_framing_is_answered_400_in_json_and_closed(server, request_bytes):
    with connect(server) as connection:
        connection.sendall(request_bytes)
        answer = read_all(connection)
    assert not answer.endswith(b"<still open>")
    [(status, body)] = parse_answers(answer)
    assert status == 400 and "malformed" in json.loads(body)["error"]
    assert b"x-content-type-options: nosniff" in answer.lower()


def test_headers_sent_too_slowly_get_a_408_and_the_connection_closes(server):
    with connect(server) as connection:
        connection.settimeout(Limits().header_seconds + 5)
        connection.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        answer = connection.recv(4096)
        assert time.monotonic() - started < Limits().header_seconds + 3
    assert answer.startswith(b"HTTP/1.1 408")


def test_made_up_methods_do_not_grow_the_metrics(server):
    def series() -> int:
        text = requests.get(f"{server['url']}/metrics", timeout=5).text
        return sum(1 for line in text.splitlines() if line and not line.startswith("#"))

    before = series()
    for index in range(100):  # the parser refuses these: 400, never counted
        requests.request(f"X{index:03d}", f"{server['url']}/", timeout=5)
    for method in ("PROPFIND", "MKCOL", "LOCK", "PURGE", "SEARCH", "REPORT", "TRACE"):
        for _ in range(10):  # methods the parser knows reach Flask: counted as "other"
            assert requests.request(method, f"{server['url']}/x", timeout=5).status_code == 404
    text = requests.get(f"{server['url']}/metrics", timeout=5).text
    assert 'method="other",route="unmatched",status="404"' in text
    assert series() - before <= 6  # the "other" series (total and created), /metrics' own


@pytest.mark.parametrize("headers, words", [
    ([f"X-Filler-{index}: {index}" for index in range(101)], "more than 100 header fields"),
    (["X-Big: " + "a" * 20_000], "larger than 8190 bytes"),
    (["X-Big: " + "a" * 8183], "larger than 8190 bytes"),  # the line and CRLF: 8192 bytes
])
def test_header_limits_are_gunicorns_answered_431_in_json(server, headers, words):
    """gunicorn's limit_request_fields (100) and limit_request_field_size (8190), which the
    uvicorn front had dropped (it took 1,000 fields and a 20 KB value)."""
    with connect(server) as connection:
        connection.sendall(("GET /health HTTP/1.1\r\nHost: x\r\n" + "".join(
            f"{header}\r\n" for header in headers) + "\r\n").encode())
        answer = read_all(connection)
    assert not answer.endswith(b"<still open>")
    [(status, body)] = parse_answers(answer)
    assert status == 431 and words in json.loads(body)["error"], (status, body)


def test_headers_within_gunicorns_limits_are_served(server):
    headers = [f"X-Filler-{index}: {index}" for index in range(98)] + ["X-Big: " + "a" * 8181]
    # (the largest field gunicorn takes: its line and CRLF are 8190 bytes)
    with connect(server) as connection:  # Host, 98 fillers and X-Big: 100 fields
        connection.sendall(("GET /livez HTTP/1.1\r\nHost: x\r\n"
                            + "".join(f"{header}\r\n" for header in headers) + "\r\n").encode())
        connection.settimeout(5)
        answer = connection.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
