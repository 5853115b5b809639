"""Operating the server: Prometheus metrics, liveness and readiness, health states, webhooks
(verified with the Standard Webhooks library, as a receiver would), the event stream and
Idempotency-Key."""

import base64
import json
import queue
import threading
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families
from standardwebhooks.webhooks import Webhook

import webhooks
from jobs.idempotency import IdempotencyKeys
from conftest import QuietHandler, image_b64, local_http_server, wait_until
from stand_ins import ScriptedPipeline

KEY = "ops-key"
SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
AUTH = {"X-API-Key": KEY}


@pytest.fixture
def client(make_client, scripted):
    return make_client({"lotus": scripted}, api_key=KEY, webhook_secret=SECRET,
                       allow_private_urls=True)


def finished(client, job_id):
    return wait_until(lambda: (lambda body: body if body["status"] in (
        "completed", "failed", "cancelled") else None)(
        client.get(f"/job/{job_id}", headers=AUTH).get_json()), timeout=20)


def submit(client, seed=1, headers=None, **body):
    return client.post("/depth", json={"image": image_b64(), "seed": seed, **body},
                       headers={**AUTH, **(headers or {})})


def scrape(client) -> dict:
    """{(name, frozenset(labels)): value} of every sample /metrics gives."""
    text = client.get("/metrics", headers=AUTH).get_data(as_text=True)
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


# -- metrics ----------------------------------------------------------------------------

def test_metrics_are_behind_the_key_in_prometheus_format(client):
    assert client.get("/metrics").status_code == 401
    response = client.get("/metrics", headers=AUTH)
    assert response.status_code == 200 and response.mimetype == "text/plain"
    assert "# TYPE sam3d_jobs_total counter" in response.get_data(as_text=True)


def test_metrics_count_jobs_stages_waits_requests_and_model_loads(client, scripted):
    scripted.actions[2] = "fail"
    done = finished(client, submit(client, seed=1).get_json()["job_id"])
    failed = finished(client, submit(client, seed=2).get_json()["job_id"])
    assert (done["status"], failed["status"]) == ("completed", "failed")
    client.get("/job/" + "0" * 32, headers=AUTH)  # a 404
    samples = scrape(client)
    lotus_png = {("pipeline", "lotus"), ("output", "depth png")}
    assert samples[("sam3d_jobs_total", frozenset(lotus_png | {("state", "completed")}))] == 1
    assert samples[("sam3d_jobs_total", frozenset(lotus_png | {("state", "failed")}))] == 1
    assert samples[("sam3d_job_duration_seconds_count", frozenset(lotus_png))] == 1
    assert samples[("sam3d_stage_duration_seconds_count",
                    frozenset({("pipeline", "lotus"), ("stage", "working")}))] == 2
    assert samples[("sam3d_queue_wait_seconds_count", frozenset({("pipeline", "lotus")}))] == 2
    assert samples[("sam3d_http_requests_total", frozenset(
        {("method", "GET"), ("route", "/job/<job_id>"), ("status", "404")}))] == 1
    assert samples[("sam3d_http_requests_total", frozenset(
        {("method", "POST"), ("route", "/depth"), ("status", "202")}))] == 2
    assert samples[("sam3d_queue_waiting_jobs", frozenset())] == 0
    assert ("sam3d_model_load_seconds", frozenset({("pipeline", "lotus")})) in samples


def test_the_queue_gauges_show_running_and_waiting_jobs(client, scripted):
    scripted.actions[1] = "block"
    submit(client, seed=1)
    assert scripted.started.get(timeout=10) == 1
    submit(client, seed=2)
    samples = scrape(client)
    assert samples[("sam3d_queue_running_jobs", frozenset())] == 1
    assert samples[("sam3d_queue_waiting_jobs", frozenset())] == 1
    scripted.release.set()


# -- health, liveness, readiness ------------------------------------------------------

def test_livez_and_readyz_are_open_and_health_names_the_state(client, scripted):
    assert client.get("/livez").get_json() == {"alive": True}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.get_json()["state"] == "ready"
    assert client.get("/health").get_json()["state"] == "ready"
    scripted.actions[1] = "block"
    submit(client, seed=1)
    scripted.started.get(timeout=10)
    assert client.get("/health").get_json()["state"] == "busy"
    assert client.get("/readyz").status_code == 200  # busy is ready: it queues
    scripted.release.set()


def test_a_model_that_failed_to_load_is_setup_failed(make_client):
    broken = ScriptedPipeline()
    broken.load = lambda: (_ for _ in ()).throw(OSError("checkpoint is corrupt"))
    client = make_client({"lotus": broken})
    health = client.get("/health")
    assert health.status_code == 503 and health.get_json()["state"] == "setup_failed"
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.get_json()["reasons"] == [
        "model 'lotus' failed to load"]


def test_models_still_loading_are_starting(make_client):
    slow = ScriptedPipeline()
    loading = threading.Event()
    slow.load = lambda: loading.wait(10)
    client = make_client({"lotus": slow}, wait=False)
    assert client.get("/health").get_json()["state"] == "starting"
    assert client.get("/readyz").status_code == 503
    loading.set()
    wait_until(lambda: client.get("/readyz").status_code == 200)


def test_a_full_output_folder_is_unhealthy_and_refuses_jobs(make_client, scripted):
    """More free space asked for than any disk here has: the volume counts as full."""
    client = make_client({"lotus": scripted}, min_free_disk_mb=2**40)
    assert client.get("/health").get_json()["state"] == "unhealthy"
    reasons = client.get("/readyz").get_json()["reasons"]
    assert any(reason.startswith("OUTPUT_DIR is full") for reason in reasons)
    response = client.post("/depth", json={"image": image_b64()})
    assert response.status_code == 507 and "OUTPUT_DIR is full" in response.get_json()["error"]
    assert response.headers["Retry-After"]


# -- webhooks ---------------------------------------------------------------------------

@pytest.fixture
def receiver():
    """A webhook receiver on loopback: answers each POST with the next scripted status."""
    received, answers = queue.Queue(), []

    class Handler(QuietHandler):
        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.put((dict(self.headers), body.decode()))
            self.send_response(answers.pop(0) if answers else 204)
            self.end_headers()

    with local_http_server(Handler) as url:
        yield f"{url}/hook?token=t0ken", received, answers


def test_a_webhook_without_a_secret_is_refused_naming_the_events_stream(make_client, scripted):
    client = make_client({"lotus": scripted}, api_key=KEY, allow_private_urls=True)
    response = submit(client, webhook="http://127.0.0.1:9/hook")
    assert response.status_code == 400 and response.get_json()["error"].endswith(
        "poll the job or follow /job/<id>/events")


def test_a_webhook_gets_the_signed_final_status(client, receiver):
    url, received, _ = receiver
    job_id = submit(client, webhook=url).get_json()["job_id"]
    headers, body = received.get(timeout=10)
    payload = Webhook(SECRET).verify(body, headers)  # raises unless the signature is right
    assert payload["type"] == "job.completed"
    assert payload["data"]["job_id"] == job_id and payload["data"]["status"] == "completed"
    assert headers["webhook-id"] == f"msg_{job_id}_completed"


def test_webhook_events_can_ask_for_the_start_too(client, receiver):
    url, received, _ = receiver
    submit(client, webhook=url, webhook_events=["start", "completed"])
    first, second = (json.loads(received.get(timeout=10)[1])["type"] for _ in range(2))
    assert (first, second) == ("job.start", "job.completed")


def test_a_failed_delivery_is_retried_with_the_same_id(client, receiver, monkeypatch):
    monkeypatch.setattr(webhooks, "RETRY_DELAYS", (0.2, 0.2))
    url, received, answers = receiver
    answers.extend([500, 502])
    submit(client, webhook=url)
    ids = [received.get(timeout=30)[0]["webhook-id"] for _ in range(3)]
    assert len(set(ids)) == 1


@pytest.mark.parametrize("overrides, url, message", [
    ({"webhook_secret": SECRET}, "http://127.0.0.1:9/hook",
     "webhook points to a private or reserved address"),
    ({"webhook_secret": SECRET}, "ftp://example.com/hook", "webhook must be an http or https"),
    ({}, "https://example.com/hook", "no WEBHOOK_SECRET"),
])
def test_a_webhook_that_cannot_be_called_is_a_400(make_client, scripted, overrides, url,
                                                  message):
    client = make_client({"lotus": scripted}, **overrides)
    response = client.post("/depth", json={"image": image_b64(), "webhook": url})
    assert response.status_code == 400 and message in response.get_json()["error"]
    assert client.get("/queue").get_json()["queued"] == 0


def test_a_webhook_secret_that_is_not_standard_webhooks_stops_the_start():
    from settings import SettingsError, load_settings

    with pytest.raises(SettingsError, match="WEBHOOK_SECRET"):
        load_settings(webhook_secret="not base64 !")


def test_a_failed_jobs_status_names_no_server_path(client, scripted, monkeypatch):
    """A result file that cannot be written (read-only disk) fails the job; its status says
    why without the temporary file's full path."""
    def read_only_disk(options, image, output_stem, progress):
        raise PermissionError(13, "Permission denied", f"{output_stem}.png.tmp-1234")

    monkeypatch.setattr(scripted, "run", read_only_disk)
    job_id = submit(client).get_json()["job_id"]
    status = finished(client, job_id)
    assert status["status"] == "failed" and "Permission denied" in status["error"]
    assert f"{job_id}.png.tmp-1234" in status["error"] and "/" not in status["error"]


# -- events -----------------------------------------------------------------------------

def test_the_event_stream_follows_the_job_to_its_end(client):
    job_id = submit(client).get_json()["job_id"]
    response = client.get(f"/job/{job_id}/events", headers=AUTH)
    assert response.mimetype == "text/event-stream"
    events = [json.loads(line[5:]) for line in response.get_data(as_text=True).splitlines()
              if line.startswith("data:")]
    assert events[-1]["status"] == "completed" and events[-1]["download_url"]
    assert all(event["job_id"] == job_id for event in events)
    assert client.get("/job/" + "0" * 32 + "/events", headers=AUTH).status_code == 404


# -- Idempotency-Key --------------------------------------------------------------------

def test_the_same_key_and_body_give_the_same_job(client):
    body = {"image": image_b64(), "seed": 5}
    headers = {**AUTH, "Idempotency-Key": "order-17"}
    first = client.post("/depth", json=body, headers=headers)
    again = client.post("/depth", json=body, headers=headers)
    assert first.status_code == 202 and again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert first.get_json()["job_id"] == again.get_json()["job_id"]
    other = client.post("/depth", json=body, headers={**AUTH, "Idempotency-Key": "order-18"})
    assert other.get_json()["job_id"] != first.get_json()["job_id"]


def test_the_same_key_with_another_body_is_a_422(client):
    headers = {**AUTH, "Idempotency-Key": "order-17"}
    client.post("/depth", json={"image": image_b64(), "seed": 5}, headers=headers)
    response = client.post("/depth", json={"image": image_b64(), "seed": 6}, headers=headers)
    assert response.status_code == 422 and "different request" in response.get_json()["error"]
    assert client.get("/queue", headers=AUTH).get_json()["queued"] <= 1


def test_a_key_too_long_is_a_400(client):
    response = submit(client, headers={"Idempotency-Key": "k" * 256})
    assert response.status_code == 400 and "Idempotency-Key" in response.get_json()["error"]


class Made:
    def __init__(self, job_id):
        self.id = job_id


def test_a_slow_keyed_submission_holds_up_only_its_own_key():
    """Key A downloads a slow image_url; key B, unrelated, is queued meanwhile."""
    keys, downloading, release = IdempotencyKeys(60), threading.Event(), threading.Event()

    def slow_submit():
        downloading.set()
        assert release.wait(10)
        return Made("job-a")

    slow = threading.Thread(target=keys.submit, args=("A", "fa", slow_submit, Made))
    slow.start()
    try:
        assert downloading.wait(5)
        started = time.monotonic()
        view, found = keys.submit("B", "fb", lambda: Made("job-b"), Made)
        assert (view.id, found) == ("job-b", False) and time.monotonic() - started < 0.5
    finally:
        release.set()
        slow.join(10)
    assert not keys._key_locks  # no lock outlives its requests


def test_two_racing_retries_of_one_key_make_one_job():
    keys, made, answers = IdempotencyKeys(60), [], []

    def submit():
        made.append(1)
        time.sleep(0.2)  # the second retry arrives while the first still downloads
        return Made(f"job-{len(made)}")

    def retry():
        answers.append(keys.submit("order-17", "same", submit, Made))

    threads = [threading.Thread(target=retry) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(made) == 1
    assert sorted((view.id, found) for view, found in answers) == [("job-1", False),
                                                                  ("job-1", True)]
    assert not keys._key_locks


def test_a_jobs_gpu_peak_reaches_its_status_and_the_metrics(client, monkeypatch):
    """On a GPU the runner measures each job's peak (pipelines/device.py); here CUDA is
    stood in for by its two calls."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda: None)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda: 3 * 2**30)
    status = finished(client, submit(client).get_json()["job_id"])
    assert status["gpu_peak_bytes"] == 3 * 2**30
    samples = scrape(client)
    assert samples[("sam3d_job_gpu_peak_bytes_count", frozenset(
        {("pipeline", "lotus"), ("output", "depth png")}))] == 1
    assert samples[("sam3d_job_gpu_peak_bytes_bucket", frozenset(
        {("pipeline", "lotus"), ("output", "depth png"), ("le", "4.294967296e+09")}))] == 1
