"""image_url cannot be turned against the host: SSRF cases, redirects, slow and huge bodies,
and servers that drip their headers, body or TLS handshake past the one deadline."""

import contextlib
import gzip
import http.server
import socket
import threading
import time
import tracemalloc
import zlib

import brotli

import pytest

from conftest import image_b64, image_bytes
from pipelines import fetch
from pipelines.fetch import FetchFailed, UnsafeURL, fetch_url, is_public_address, post_checked
from pipelines.images import ImageLimits, InvalidImage
from pipelines.sam3d_parts.masks import read_client_mask

PHOTO = image_bytes(width=32, height=24)


def deflated_zeros(size: int, wbits: int) -> bytes:
    """`size` zero bytes compressed (gzip for wbits 31), without holding them."""
    packer, block = zlib.compressobj(9, zlib.DEFLATED, wbits), bytes(1 << 20)
    return b"".join(packer.compress(block) for _ in range(size >> 20)) + packer.flush()


BOMB = 128 << 20  # what each bomb inflates to: 128 MiB
# The adversarial run's bombs: brotli's 128 MiB of zeros is about a hundred bytes; a gzip
# of a gzip (Content-Encoding "gzip, gzip", decoded by urllib3 in turn) a few hundred.
BOMBS = {"br": brotli.compress(bytes(BOMB), quality=11),
         "gzip": deflated_zeros(BOMB, 31),
         "gzip, gzip": gzip.compress(deflated_zeros(BOMB, 31), 9),
         "deflate": deflated_zeros(BOMB, 15)}
DRIP = 0.2  # seconds between two bytes of a dripping server


class Handler(http.server.BaseHTTPRequestHandler):
    connections = 0

    def log_message(self, *args):
        pass

    def do_GET(self):
        type(self).connections += 1
        if self.path == "/photo.png":
            self._send(200, PHOTO)
        elif self.path.startswith("/redirect?to="):
            self.send_response(302)
            self.send_header("Location", self.path.split("=", 1)[1])
            self.end_headers()
        elif self.path == "/loop":
            self.send_response(302)
            self.send_header("Location", "/loop")
            self.end_headers()
        elif self.path == "/big":
            self._send(200, b"x" * 5000)
        elif self.path == "/big-chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for _ in range(10):
                self.wfile.write(b"3e8\r\n" + b"x" * 1000 + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        elif self.path == "/slow":
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            for _ in range(100):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.1)
        elif self.path == "/drip-headers":
            self.drip_headers()
        elif self.path.startswith("/bomb/"):  # /bomb/<encoding>[/chunked]
            encoding = self.path.split("/")[2].replace("%20", " ")
            body = BOMBS[encoding]
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Encoding", encoding)
            if self.path.endswith("/chunked"):
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                self.wfile.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
            else:
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
        elif self.path == "/identity-asked":  # what the fetcher asked for, as the body
            self._send(200, self.headers.get("Accept-Encoding", "").encode())
        elif self.path == "/silent":
            time.sleep(5)
        elif self.path.startswith("/slow-redirect"):  # each hop answers just inside a timeout
            time.sleep(0.4)
            self.send_response(302)
            self.send_header("Location", "/slow-redirect")
            self.end_headers()
        elif self.path == "/bad-location":
            self.send_response(302)
            self.send_header("Location", "http://[::1")
            self.end_headers()
        else:
            self._send(404, b"no")

    def do_POST(self):  # a webhook receiver that drips its answer
        self.drip_headers()

    def drip_headers(self):
        """A status line, then one header byte every DRIP seconds: each read gets a byte
        well inside urllib3's per-read timeout, for up to 10 s."""
        self.wfile.write(b"HTTP/1.1 200 OK\r\n")
        for _ in range(int(10 / DRIP)):
            self.wfile.write(b"X")
            self.wfile.flush()
            time.sleep(DRIP)

    def _send(self, status, body):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # the fetcher hangs up on purpose (caps and deadlines)


@pytest.fixture(scope="module")
def host():
    server = QuietServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


# "public.test" stands for a public name: it resolves to the loopback test server, which
# these tests treat as public; "private.test" resolves to a private address.
NAMES = {"public.test": ["127.0.0.1"], "private.test": ["10.0.0.7"],
         "mixed.test": ["93.184.216.34", "192.168.0.10"]}


def resolve(host, port):
    return NAMES.get(host) or fetch.resolve_host(host, port)


def get(url, **kwargs):
    kwargs.setdefault("max_bytes", 1_000_000)
    kwargs.setdefault("timeout", 2.0)
    return fetch_url(url, resolve=resolve,
                     is_allowed=lambda a: a == "127.0.0.1" or is_public_address(a), **kwargs)


@pytest.fixture
def no_connections(monkeypatch):
    """Fail the test if any connection is opened."""
    def refuse(*args, **kwargs):
        raise AssertionError("a connection was opened")
    monkeypatch.setattr(fetch.urllib3, "HTTPConnectionPool", refuse)
    monkeypatch.setattr(fetch.urllib3, "HTTPSConnectionPool", refuse)


@pytest.mark.parametrize("url", [
    "http://127.0.0.1/", "http://localhost:8000/", "http://10.1.2.3/a.png",
    "http://172.16.5.4/", "http://172.31.255.1/", "http://192.168.1.1/",
    "http://169.254.169.254/latest/meta-data/", "http://[::1]/", "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:a9fe:a9fe]/", "http://0.0.0.0/", "http://224.0.0.1/", "http://100.64.0.1/",
    "http://private.test/photo.png", "http://mixed.test/photo.png",
    # IPv6 transition and site-local forms of private addresses
    "http://[64:ff9b::a00:1]/", "http://[2002:a00:1::]/", "http://[::a00:1]/",
    "http://[fec0::1]/", "http://[64:ff9b:1::a00:1]/",
])
def test_private_loopback_link_local_and_reserved_addresses_are_refused(url, no_connections):
    # the refusal names the setting that lifts it (issue 32 item 8)
    with pytest.raises(UnsafeURL, match="private or reserved address.*ALLOW_PRIVATE_URLS"):
        fetch_url(url, max_bytes=1000, timeout=1, resolve=resolve)


@pytest.mark.parametrize("url", ["file:///etc/passwd", "gopher://example.com/", "ftp://x/",
                                 "data:image/png;base64,AAAA", "//example.com/a.png", "http://",
                                 "http://[::1", "http://[zz::1]/"])
def test_only_http_and_https_urls_with_a_host_are_fetched(url, no_connections):
    with pytest.raises(UnsafeURL):
        fetch_url(url, max_bytes=1000, timeout=1)


def test_the_checked_address_is_the_one_connected_to(host):
    assert get(f"http://public.test:{host}/photo.png") == PHOTO


def test_redirects_are_checked_hop_by_hop(host):
    assert get(f"http://public.test:{host}/redirect?to=/photo.png") == PHOTO
    before = Handler.connections
    with pytest.raises(UnsafeURL):
        get(f"http://public.test:{host}/redirect?to=http://private.test:{host}/photo.png")
    with pytest.raises(UnsafeURL):
        get(f"http://public.test:{host}/redirect?to=http://169.254.169.254/latest/")
    assert Handler.connections == before + 2  # only the two allowed first hops


def test_redirect_loops_end(host):
    with pytest.raises(FetchFailed, match="redirected more than"):
        get(f"http://public.test:{host}/loop")


def test_oversize_bodies_are_cut_off(host):
    with pytest.raises(FetchFailed, match="larger than 1000 bytes"):
        get(f"http://public.test:{host}/big", max_bytes=1000)
    with pytest.raises(FetchFailed, match="larger than 1000 bytes"):
        get(f"http://public.test:{host}/big-chunked", max_bytes=1000)


@pytest.mark.parametrize("encoding", sorted(BOMBS))
@pytest.mark.parametrize("framing", ["", "/chunked"])
def test_a_compressed_bomb_is_refused_without_inflating_it(host, encoding, framing):
    """A few hundred bytes that inflate to 128 MiB, under a 2 MiB cap: refused naming the
    encoding, and the fetch never holds more than a few MiB (urllib3 used to inflate each
    64 KiB read, tens of MiB at a time, before the cap counted it)."""
    assert len(BOMBS[encoding]) < 300_000
    tracemalloc.start()
    try:
        with pytest.raises(FetchFailed, match="Content-Encoding"):
            get(f"http://public.test:{host}/bomb/{encoding.replace(' ', '%20')}{framing}",
                max_bytes=2 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, f"{peak / 2**20:.0f} MiB held for a {len(BOMBS[encoding])}-byte body"


def test_the_fetcher_asks_for_an_unencoded_body(host):
    assert get(f"http://public.test:{host}/identity-asked") == b"identity"


def test_slow_servers_are_cut_off(host):
    started = time.monotonic()
    with pytest.raises(FetchFailed):
        get(f"http://public.test:{host}/slow", timeout=1.0)
    with pytest.raises(FetchFailed):
        get(f"http://public.test:{host}/silent", timeout=1.0)
    assert time.monotonic() - started < 4


def ends_by_its_deadline(fetch, match="too long to answer"):
    """`fetch` (timeout 1 s) fails with a clear message within about a second."""
    started = time.monotonic()
    with pytest.raises(FetchFailed, match=match):
        fetch()
    assert time.monotonic() - started < 1.0 + 1.0


def test_a_server_dripping_its_headers_is_cut_off_at_the_deadline(host):
    ends_by_its_deadline(lambda: get(f"http://public.test:{host}/drip-headers", timeout=1.0))


def test_a_server_dripping_its_body_is_cut_off_at_the_deadline(host):
    ends_by_its_deadline(lambda: get(f"http://public.test:{host}/slow", timeout=1.0),
                         match="too long to download")


@pytest.fixture
def tls_listener():
    """A TCP port that accepts and then sends nothing ("silent") or a TLS record header
    followed by one byte every DRIP seconds ("drip"): a TLS handshake that never ends."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(5)
    mode = {}

    def serve():
        with contextlib.suppress(OSError):
            connection, _ = listener.accept()
            with connection:
                if mode.get("drip"):
                    connection.sendall(b"\x16\x03\x03\x40\x00")  # a 16 KiB handshake record
                for _ in range(int(10 / DRIP)):
                    if mode.get("drip"):
                        connection.sendall(b"\x00")
                    time.sleep(DRIP)

    def start(drip):
        mode["drip"] = drip
        threading.Thread(target=serve, daemon=True).start()
        return listener.getsockname()[1]

    yield start
    listener.close()


@pytest.mark.parametrize("drip", [False, True], ids=["silent", "dripping"])
def test_a_tls_handshake_that_never_ends_is_cut_off_at_the_deadline(tls_listener, drip):
    port = tls_listener(drip)
    ends_by_its_deadline(lambda: get(f"https://public.test:{port}/photo.png", timeout=1.0),
                         match="too long to answer$")


def test_a_mask_url_dripping_its_headers_is_cut_off_at_the_deadline(host):
    limits = ImageLimits(max_side=4096, url_max_bytes=1_000_000, url_timeout_seconds=1.0,
                         allow_private_urls=True)
    started = time.monotonic()
    with pytest.raises(InvalidImage, match="mask_url: image_url took too long"):
        read_client_mask(f"http://127.0.0.1:{host}/drip-headers", (32, 24), "mask_url",
                         is_url=True, limits=limits)
    assert time.monotonic() - started < 2.0


def test_a_webhook_receiver_dripping_its_answer_is_cut_off_at_the_deadline(host):
    ends_by_its_deadline(lambda: post_checked(
        f"http://127.0.0.1:{host}/hook", b"{}", {"Content-Type": "application/json"},
        what="webhook", timeout=1.0, allow_private=True), match="webhook took too long")


def test_one_deadline_covers_every_redirect(host):
    """Each hop answers within the timeout; together they must not outlast it."""
    started = time.monotonic()
    with pytest.raises(FetchFailed, match="too long|Timeout"):
        get(f"http://public.test:{host}/slow-redirect", timeout=1.0)
    assert time.monotonic() - started < 1.6


def test_a_malformed_redirect_location_is_refused(host):
    with pytest.raises(UnsafeURL, match="malformed"):
        get(f"http://public.test:{host}/bad-location")


def test_http_errors_are_reported(host):
    with pytest.raises(FetchFailed, match="HTTP 404"):
        get(f"http://public.test:{host}/missing")


def test_the_api_refuses_private_image_urls_with_400(make_client, scripted, host, tmp_path):
    client = make_client({"lotus": scripted})
    for url in (f"http://127.0.0.1:{host}/photo.png", "http://169.254.169.254/", "file:///etc/passwd"):
        response = client.post("/depth", json={"image_url": url})
        assert response.status_code == 400, url
        assert "image_url" in response.get_json()["error"]
    assert Handler.connections >= 0 and scripted.started.empty()
    allowed = make_client({"lotus": scripted}, allow_private_urls=True,
                          output_dir=tmp_path / "other")  # one OUTPUT_DIR per server
    response = allowed.post("/depth", json={"image_url": f"http://127.0.0.1:{host}/photo.png"})
    assert response.status_code == 202
    assert client.post("/depth", json={"image": image_b64()}).status_code == 202


def test_a_full_queue_refuses_before_fetching(make_client, scripted, host):
    client = make_client({"lotus": scripted}, max_queue_size=1, allow_private_urls=True)
    scripted.actions[1] = "block"
    assert client.post("/depth", json={"image": image_b64(), "seed": 1}).status_code == 202
    scripted.started.get(timeout=5)
    assert client.post("/depth", json={"image": image_b64(), "seed": 2}).status_code == 202
    before = Handler.connections
    started = time.monotonic()
    response = client.post("/depth", json={"image_url": f"http://127.0.0.1:{host}/silent"})
    assert response.status_code == 503 and time.monotonic() - started < 0.5
    assert Handler.connections == before  # never downloaded


def test_the_api_answers_a_compressed_bomb_with_400(make_client, scripted, host):
    client = make_client({"lotus": scripted}, allow_private_urls=True)
    response = client.post("/depth", json={
        "image_url": f"http://127.0.0.1:{host}/bomb/gzip,%20gzip"})
    assert response.status_code == 400
    assert "Content-Encoding" in response.get_json()["error"]
    assert scripted.started.empty()
