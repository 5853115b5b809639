"""The HTTP API with Flask's test client: the guide's shapes, every error path, auth."""

import base64
import io
import json
import threading

import numpy as np
import pytest
import trimesh
from PIL import Image

from conftest import SAM3D_STAND_IN, image_b64, image_bytes, sam3d_checkpoints, wait_until
from pipelines.lotus import Lotus
from pipelines.sam3d_parts.masks import Masker
from pipelines.sam3d import Sam3DObjects

GLB_MAGIC = b"glTF"


@pytest.fixture
def sam3d_folder(tmp_path):
    return sam3d_checkpoints(tmp_path / "sam3d-checkpoints")


def sam3d(checkpoints, vram_gib=40.0):
    return Sam3DObjects(checkpoints, SAM3D_STAND_IN, masker=Masker(None), vram_gib=vram_gib)


@pytest.fixture
def client(make_client, scripted, sam3d_folder):
    """sam3d: the stand-in behind the real wrapper; lotus: the scripted test pipeline."""
    return make_client({"sam3d": sam3d(sam3d_folder), "lotus": scripted})


def poll(client, job_id, timeout=20):
    return wait_until(lambda: (lambda body: body if body["status"] in (
        "completed", "failed", "cancelled") else None)(client.get(f"/job/{job_id}").get_json()),
        timeout=timeout)


# -- the guide's API --------------------------------------------------------------------

def test_health_reports_the_guides_fields(client):
    response = client.get("/health")
    body = response.get_json()
    assert response.status_code == 200
    assert body["status"] == "healthy" and body["model_loaded"] is True
    assert body["cuda"] is False and body["gpu"] is None
    lane = {"queued": 0, "processing": 0, "workers": 1, "ready_workers": 1,
            "mean_seconds": None}
    assert body["queue"] == {"queued": 0, "processing": 0, "max_queue_size": 10,
                             "max_concurrent": 1, "lanes": {"lotus": lane, "sam3d": lane}}
    assert [(w["pipeline"], w["state"]) for w in body["workers"]] == [
        ("lotus", "ready"), ("sam3d", "ready")]
    assert body["pipelines"] == {"sam3d": "ready", "lotus": "ready"}
    assert client.get("/queue").get_json() == body["queue"]


def test_health_is_unhealthy_when_there_is_nothing_to_serve(make_client):
    response = make_client({})
    health = response.get("/health")
    assert health.status_code == 503 and health.get_json()["status"] == "unhealthy"


def test_health_answers_at_once_while_models_load(make_client, scripted):
    gate = threading.Event()
    scripted.load = lambda: gate.wait(10)
    client = make_client({"lotus": scripted}, wait=False)
    body = client.get("/health").get_json()
    assert body["model_loaded"] is False and body["status"] == "loading"
    response = client.post("/depth", json={"image": image_b64()})
    assert response.status_code == 503 and "loading" in response.get_json()["error"]
    assert response.headers["Retry-After"]
    gate.set()
    wait_until(lambda: client.get("/health").get_json()["model_loaded"])


def test_async_generate_poll_and_download_a_glb(client):
    response = client.post("/generate", json={"image": image_b64(), "output_format": "glb",
                                              "with_texture": True})
    body = response.get_json()
    assert response.status_code == 202
    assert set(body) == {"job_id", "status", "position", "status_url", "message"}
    assert body["status"] == "queued" and body["status_url"] == f"/job/{body['job_id']}"
    assert body["message"] == (f"Job queued at position {body['position']}. "
                               "Poll status_url for updates.")
    done = poll(client, body["job_id"])
    assert done["status"] == "completed" and done["position"] == 0
    assert done["download_url"] == f"/job/{body['job_id']}/download"
    assert done["processing_time"] >= 0 and done["stage"] == "completed"
    download = client.get(done["download_url"])
    assert download.status_code == 200
    assert download.headers["Content-Type"] == "model/gltf-binary"
    assert 'filename=model.glb' in download.headers["Content-Disposition"]
    assert int(download.headers["Content-Length"]) == len(download.data)
    assert download.data[:4] == GLB_MAGIC
    mesh = trimesh.load(io.BytesIO(download.data), file_type="glb", force="mesh")
    assert len(mesh.faces) > 0


def test_sync_generate_returns_the_file_itself(client):
    response = client.post("/generate/sync", json={"image": image_b64(), "output_format": "ply"})
    assert response.status_code == 200
    assert 'filename=model.ply' in response.headers["Content-Disposition"]
    header = response.data.split(b"end_header", 1)[0].decode()
    assert "property float f_dc_0" in header and "property float rot_3" in header


def test_depth_sync_answers_with_the_plans_json(make_client, checkpoints):
    client = make_client({"lotus": Lotus(checkpoints)})
    response = client.post("/depth/sync", json={"image_base64": image_b64(width=40, height=30),
                                                "processing_res": 64})
    body = response.get_json()
    assert response.status_code == 200, body
    png = Image.open(io.BytesIO(base64.b64decode(body["image_base64"])))
    assert png.size == (40, 30) and png.mode == "L"
    assert 0.0 <= body["min"] <= body["max"] <= 1.0
    assert body["file_path"].endswith(".png") and "/" not in body["file_path"]
    assert client.get(body["download_url"]).data == base64.b64decode(body["image_base64"])


def test_queued_job_status_shows_position_and_queue_length(client, scripted):
    scripted.actions[1] = "block"
    first = client.post("/depth", json={"image": image_b64(), "seed": 1}).get_json()
    scripted.started.get(timeout=5)
    second = client.post("/depth", json={"image": image_b64(), "seed": 2}).get_json()
    assert second["position"] == 1
    status = client.get(f"/job/{second['job_id']}").get_json()
    assert status == {"job_id": second["job_id"], "status": "queued", "position": 1,
                      "queue_length": 2, "message": "Waiting in queue, position 1",
                      "stage": "queued", "progress": 0.0}
    running = client.get(f"/job/{first['job_id']}").get_json()
    assert running["status"] == "processing" and running["stage"] == "working"
    assert client.get(f"/job/{second['job_id']}/download").status_code == 409
    scripted.release.set()
    assert poll(client, second["job_id"])["status"] == "completed"


# -- how users send images --------------------------------------------------------------

def git_bash_body(b64: str) -> bytes:
    """Exactly what the guide's echo + `base64 -w 0` + echo recipe writes."""
    return b'{"image": "\n' + b64.encode() + b'\n", "output_format": "glb", "with_texture": true}\n'


@pytest.mark.parametrize("body", [
    git_bash_body(image_b64()),
    json.dumps({"image": base64.encodebytes(image_bytes()).decode()}).encode(),
    json.dumps({"image": "data:image/png;base64," + image_b64()}).encode(),
    b"\xef\xbb\xbf" + json.dumps({"image": image_b64(), "with_texture": True}, indent=4).encode(),
], ids=["git-bash-recipe", "base64-with-line-breaks", "data-url", "powershell-bom"])
def test_bodies_from_curl_powershell_and_git_bash_are_accepted(client, body):
    response = client.post("/generate/sync", data=body, content_type="application/json")
    assert response.status_code == 200, response.get_json()
    assert response.data[:4] == GLB_MAGIC


# -- errors ---------------------------------------------------------------------------------

@pytest.mark.parametrize("body, message", [
    ({}, "exactly one of"),
    ({"image": image_b64(), "image_url": "https://example.com/a.png"}, "exactly one of"),
    ({"image": "not base64 !!!"}, "not valid base64"),
    ({"image": base64.b64encode(b"hello, world").decode()}, "not a supported image"),
    ({"image": image_b64(), "output_format": "fbx"}, "output_format"),
    ({"image": image_b64(), "seed": "42"}, "seed"),
    ({"image": image_b64(), "with_texture": "yes"}, "with_texture"),
    ({"image": image_b64(), "texture_size": 777}, "texture_size"),
    ({"image": image_b64(), "stage1_steps": 0}, "stage1_steps"),
    ({"image": image_b64(), "colour": "red"}, "colour"),
    ({"image": 12345}, "image"),
])
def test_bad_input_is_a_400_with_a_clear_json_error(client, body, message):
    response = client.post("/generate", json=body)
    assert response.status_code == 400
    assert message in response.get_json()["error"]


@pytest.mark.parametrize("data", [
    b"", b"not json", b"[1, 2]", b'"text"', b"\xff\xfe{", b"[" * 100_000 + b"]" * 100_000,
    b'{"image": "x", "seed": ' + b"9" * 5000 + b"}",
], ids=["empty", "text", "array", "string", "bad-utf8", "deep-nesting", "5000-digit-number"])
def test_bodies_that_are_not_json_objects_are_400(client, data):
    response = client.post("/generate", data=data, content_type="application/json")
    assert response.status_code == 400 and "error" in response.get_json()


def test_unknown_and_malformed_job_ids_are_404(client):
    for job_id in ("0" * 32, "abc12345", "zz", "%2e%2e"):
        response = client.get(f"/job/{job_id}")
        assert response.status_code == 404 and response.get_json() == {"error": "job not found"}


def test_unknown_routes_and_methods_answer_json(client):
    assert client.get("/nope").get_json()["error"]
    response = client.get("/generate")
    assert response.status_code == 405 and response.get_json()["error"]


def test_oversized_bodies_are_413(make_client, scripted):
    client = make_client({"lotus": scripted}, max_content_length=2048)
    response = client.post("/depth", json={"image": "A" * 4096})
    assert response.status_code == 413 and "larger than 2048" in response.get_json()["error"]


def test_full_queue_is_503_with_retry_after_and_nothing_is_lost(make_client, scripted):
    client = make_client({"lotus": scripted}, max_queue_size=1)
    scripted.actions[1] = "block"
    running = client.post("/depth", json={"image": image_b64(), "seed": 1}).get_json()
    scripted.started.get(timeout=5)
    waiting = client.post("/depth", json={"image": image_b64(), "seed": 2}).get_json()
    refused = client.post("/depth", json={"image": image_b64(), "seed": 3})
    assert refused.status_code == 503 and refused.headers["Retry-After"]
    assert "queue is full" in refused.get_json()["error"]
    scripted.release.set()
    assert poll(client, running["job_id"])["status"] == "completed"
    assert poll(client, waiting["job_id"])["status"] == "completed"


def test_a_pipeline_that_is_not_served_here_is_501_saying_why(make_client, scripted):
    client = make_client({"lotus": scripted})
    response = client.post("/generate", json={"image": image_b64()})
    assert response.status_code == 501 and "not loaded" in response.get_json()["error"]
    assert "no pipeline.yaml in CHECKPOINTS_DIR" in response.get_json()["error"]
    assert "needs a CUDA GPU, see DEPLOY.md" in response.get_json()["error"]
    assert "Retry-After" not in response.headers  # retrying would not help: it never loads


def test_health_says_why_each_known_pipeline_is_not_served_and_readiness_is_the_served_ones(
        make_client, scripted):
    """`pipelines` keeps to the served ones (readiness, `model_loaded`); `pipeline_reasons`
    says, in the API's words, why the others take no job and what to do."""
    client = make_client({"lotus": scripted})
    health = client.get("/health").get_json()
    assert health["pipelines"] == {"lotus": "ready"} and health["model_loaded"] is True
    reasons = health["pipeline_reasons"]
    assert set(reasons) == {"sam3d", "depth_anything", "segment"}  # the table's others
    assert reasons["depth_anything"].startswith("not served here: not configured: no Depth")
    assert reasons["sam3d"].startswith("not served here: not configured: no pipeline.yaml")
    assert "needs a CUDA GPU, see DEPLOY.md" in reasons["sam3d"]
    assert reasons["sam3d"] in client.post("/generate", json={"image": image_b64()}).get_json()[
        "error"]


def test_failed_jobs_show_the_error_and_the_download_says_why(client, scripted):
    scripted.actions[5] = "fail"
    job = client.post("/depth", json={"image": image_b64(), "seed": 5}).get_json()
    status = poll(client, job["job_id"])
    assert status["status"] == "failed" and "the model broke" in status["error"]
    assert "Traceback" not in status["error"]
    download = client.get(f"/job/{job['job_id']}/download")
    assert download.status_code == 500 and "the model broke" in download.get_json()["error"]


def test_out_of_memory_in_sync_mode_is_507_with_the_guides_advice(client, scripted):
    scripted.actions[9] = "oom"
    response = client.post("/depth/sync", json={"image": image_b64(), "seed": 9})
    assert response.status_code == 507
    assert "Out of GPU memory" in response.get_json()["error"]
    assert client.post("/depth/sync", json={"image": image_b64(), "seed": 10}).status_code == 200


def test_sync_timeout_is_504_with_the_job_id_to_keep_polling(make_client, scripted):
    client = make_client({"lotus": scripted}, sync_timeout_seconds=0.3)
    scripted.actions[1] = "block"
    response = client.post("/depth/sync", json={"image": image_b64(), "seed": 1})
    body = response.get_json()
    assert response.status_code == 504 and body["job_id"]
    assert body["status_url"] == f"/job/{body['job_id']}"
    scripted.release.set()
    assert poll(client, body["job_id"])["status"] == "completed"


def test_expired_results_are_410(make_client, scripted):
    client = make_client({"lotus": scripted}, result_ttl_seconds=0.2)
    job = client.post("/depth", json={"image": image_b64()}).get_json()
    poll(client, job["job_id"])
    wait_until(lambda: client.get(f"/job/{job['job_id']}").status_code == 410, timeout=5)
    assert client.get(f"/job/{job['job_id']}/download").status_code == 410


def test_a_sync_request_whose_result_expires_while_it_waits_is_410(client, monkeypatch):
    from queue_manager import JobExpired

    def expired_meanwhile(job_id, timeout):
        raise JobExpired(job_id)

    monkeypatch.setattr(client.application.extensions["queue"], "wait", expired_meanwhile)
    for endpoint in ("/depth/sync", "/generate/sync"):
        response = client.post(endpoint, json={"image": image_b64()})
        assert response.status_code == 410 and "expired" in response.get_json()["error"]


def test_a_file_that_cannot_be_deleted_does_not_stop_expiry(make_client, scripted,
                                                           monkeypatch):
    from pathlib import Path

    client = make_client({"lotus": scripted}, result_ttl_seconds=0.2)
    queue = client.application.extensions["queue"]
    first = client.post("/depth", json={"image": image_b64(), "seed": 5}).get_json()["job_id"]
    poll(client, first)
    real_unlink = Path.unlink
    monkeypatch.setattr(Path, "unlink", lambda self, missing_ok=False: (_ for _ in ()).throw(
        PermissionError("read-only volume")) if first in self.name else real_unlink(
            self, missing_ok=missing_ok))
    wait_until(lambda: client.get(f"/job/{first}").status_code == 410, timeout=5)
    second = client.post("/depth", json={"image": image_b64(), "seed": 6}).get_json()["job_id"]
    poll(client, second)
    wait_until(lambda: client.get(f"/job/{second}").status_code == 410, timeout=5)
    assert queue.janitor_alive()


def test_health_is_unhealthy_when_results_cannot_be_written(make_client, scripted, tmp_path):
    import shutil

    client = make_client({"lotus": scripted}, output_dir=tmp_path / "volume")
    assert client.get("/health").status_code == 200
    shutil.rmtree(tmp_path / "volume")
    (tmp_path / "volume").write_text("the volume is gone")
    response = client.get("/health")
    assert response.status_code == 503 and response.get_json()["status"] == "unhealthy"


def test_every_job_leaves_one_log_line_when_it_starts_and_one_when_it_ends(client, scripted,
                                                                          caplog):
    import logging

    scripted.actions[9] = "fail"
    with caplog.at_level(logging.INFO, logger="queue_manager"):
        ok = client.post("/depth", json={"image": image_b64(), "seed": 8}).get_json()["job_id"]
        bad = client.post("/depth", json={"image": image_b64(), "seed": 9}).get_json()["job_id"]
        poll(client, ok), poll(client, bad)
    lines = [record.getMessage() for record in caplog.records if record.name == "queue_manager"]
    assert any(line.startswith(f"job {ok} started: lotus depth png") for line in lines)
    assert any(line.startswith(f"job {ok} completed after") for line in lines)
    assert any(line.startswith(f"job {bad} failed after") and "(internal: RuntimeError" in line
               for line in lines)


def test_delete_cancels_queued_and_running_jobs(client, scripted):
    scripted.actions[1] = "block"
    running = client.post("/depth", json={"image": image_b64(), "seed": 1}).get_json()
    scripted.started.get(timeout=5)
    queued = client.post("/depth", json={"image": image_b64(), "seed": 2}).get_json()
    response = client.delete(f"/job/{queued['job_id']}")
    assert response.status_code == 200 and response.get_json()["status"] == "cancelled"
    response = client.delete(f"/job/{running['job_id']}")
    assert response.status_code == 202 and "Cancelling" in response.get_json()["message"]
    scripted.release.set()
    assert poll(client, running["job_id"])["status"] == "cancelled"
    assert client.delete(f"/job/{running['job_id']}").status_code == 409
    assert client.get(f"/job/{running['job_id']}/download").status_code == 409


def test_a_gpu_too_small_for_sam3d_refuses_at_submit_and_queues_nothing(make_client,
                                                                         sam3d_folder):
    client = make_client({"sam3d": sam3d(sam3d_folder, vram_gib=12.0)})
    for output in ({"output_format": "glb"}, {"output_format": "ply"}):
        response = client.post("/generate", json={"image": image_b64(), **output})
        assert response.status_code == 507
        assert "needs about" in response.get_json()["error"]
        assert "SAM3D_OFFLOAD" in response.get_json()["error"]  # the advice names the mode
    assert client.get("/queue").get_json()["queued"] == 0


# -- API key ----------------------------------------------------------------------------------

@pytest.fixture
def locked(make_client, scripted):
    return make_client({"lotus": scripted}, api_key="s3cret-key")


def test_api_key_is_required_everywhere_but_health(locked):
    assert locked.get("/health").status_code == 200
    for method, path in (("get", "/queue"), ("post", "/depth"), ("get", "/job/" + "0" * 32)):
        response = getattr(locked, method)(path)
        assert response.status_code == 401 and "Unauthorized" in response.get_json()["error"]
    assert locked.get("/queue", headers={"X-API-Key": "wrong"}).status_code == 401


@pytest.mark.parametrize("headers", [{"Authorization": "Bearer s3cret-key"},
                                     {"X-API-Key": "s3cret-key"},
                                     {"lotus-api-key": "s3cret-key"}])
def test_api_key_is_accepted_in_each_documented_header(locked, headers):
    assert locked.get("/queue", headers=headers).status_code == 200


def test_open_health_names_no_running_job_and_no_process(make_client, scripted):
    """Issue 31 item 13: on a server without API_KEY a job id is all that guards a result
    and a forced cancel, so /health shows how busy a worker is, never which job it runs."""
    client = make_client({"lotus": scripted})
    scripted.actions[1] = "block"
    job_id = client.post("/depth", json={"image": image_b64(), "seed": 1}).get_json()["job_id"]
    scripted.started.get(timeout=5)
    answer = client.get("/health")
    assert job_id not in answer.get_data(as_text=True)
    [worker] = answer.get_json()["workers"]
    assert worker["running"] == 1 and "jobs" not in worker and "pid" not in worker
    scripted.release.set()


def test_only_the_key_holder_sees_which_jobs_a_worker_runs(locked, scripted):
    headers = {"X-API-Key": "s3cret-key"}
    scripted.actions[1] = "block"
    job_id = locked.post("/depth", json={"image": image_b64(), "seed": 1},
                         headers=headers).get_json()["job_id"]
    scripted.started.get(timeout=5)
    for wrong in ({}, {"X-API-Key": "wrong"}):
        answer = locked.get("/health", headers=wrong)
        assert answer.status_code == 200 and job_id not in answer.get_data(as_text=True)
    [worker] = locked.get("/health", headers=headers).get_json()["workers"]
    assert worker["jobs"] == [job_id] and worker["running"] == 1
    scripted.release.set()


def test_lotus_api_key_is_honoured_as_a_fallback(make_client, scripted):
    client = make_client({"lotus": scripted}, lotus_api_key="plan-key")
    assert client.get("/queue").status_code == 401
    assert client.get("/queue", headers={"X-API-Key": "plan-key"}).status_code == 200


# -- multipart/form-data uploads -----------------------------------------------------

def upload(client, path, **fields):
    files = {name: (io.BytesIO(value), f"{name}.png") if isinstance(value, bytes) else value
             for name, value in fields.items()}
    return client.post(path, data=files, content_type="multipart/form-data")


def test_a_form_upload_runs_the_same_job_as_json(make_client, checkpoints):
    client = make_client({"lotus": Lotus(checkpoints)})
    photo = image_bytes(width=40, height=30, fmt="JPEG")
    form = upload(client, "/depth/sync", image=photo, processing_res="64", seed="7")
    sent = client.post("/depth/sync", json={"image": base64.b64encode(photo).decode(),
                                            "processing_res": 64, "seed": 7})
    assert form.status_code == sent.status_code == 200, form.get_json()
    assert form.get_json()["image_base64"] == sent.get_json()["image_base64"]


def test_a_form_sends_numbers_a_field_allows_as_text(client):
    """`curl -F texture_size=2048` is text; the field allows the numbers 512, 1024, 2048."""
    form = upload(client, "/generate/sync", image=image_bytes(), output_format="glb",
                  with_texture="true", texture_size="2048")
    assert form.status_code == 200, form.get_json()
    refused = upload(client, "/generate", image=image_bytes(), texture_size="777")
    assert refused.status_code == 400
    assert "texture_size: Input should be 512, 1024 or 2048" in refused.get_json()["error"]


@pytest.mark.parametrize("fields, message", [
    ({"image": b""}, "image is empty"),
    ({"image": b"not an image"}, "not a supported image"),
    ({"image": image_bytes(), "processing_res": "many"}, "processing_res: Input should be"),
    ({"image": image_bytes(), "colour": "red"}, "colour: Extra inputs are not permitted"),
    ({"processing_res": "64"}, "send exactly one of 'image'"),
    ({"image": [(io.BytesIO(image_bytes()), "a.png"), (io.BytesIO(image_bytes()), "b.png")]},
     "image: send one value, not 2"),
])
def test_bad_form_uploads_are_400_and_queue_nothing(client, fields, message):
    answer = upload(client, "/depth", **fields)
    assert answer.status_code == 400 and message in answer.get_json()["error"]
    assert client.get("/queue").get_json()["queued"] == 0


def raw_form(parts: list[tuple[bytes, bytes]], boundary=b"b0undary") -> tuple[bytes, str]:
    """A multipart body as a client writes it, byte for byte: (part headers, content)."""
    body = b"".join(b"--" + boundary + b"\r\n" + headers + b"\r\n\r\n" + content + b"\r\n"
                    for headers, content in parts) + b"--" + boundary + b"--\r\n"
    return body, f"multipart/form-data; boundary={boundary.decode()}"


@pytest.mark.parametrize("name", ["café.png".encode("latin-1"), "café.png".encode("cp1252"),
                                  "naïve photo.png".encode("utf-8"), b"\xff\xfe.png"])
def test_a_file_name_that_is_not_utf8_still_uploads(client, name):
    """Issue 31 item 9: curl on Windows sends the name in the ANSI code page; werkzeug used to
    drop the whole form for it (400 "send exactly one of 'image'"). The name is not needed."""
    body, content_type = raw_form([
        (b'Content-Disposition: form-data; name="image"; filename="' + name + b'"\r\n'
         b"Content-Type: image/png", image_bytes()),
        (b'Content-Disposition: form-data; name="seed"', b"5")])
    answer = client.post("/depth", data=body, content_type=content_type)
    assert answer.status_code == 202, answer.get_json()
    assert poll(client, answer.get_json()["job_id"])["status"] == "completed"


def test_a_form_of_too_many_parts_is_a_413_that_says_so(client):
    """Issue 31 item 10: 1,001 tiny parts are 83 KB, far below the size limit; the 413 says
    what is wrong with them."""
    body, content_type = raw_form([(b'Content-Disposition: form-data; name="x"', b"1")] * 1001)
    answer = client.post("/depth", data=body, content_type=content_type)
    assert answer.status_code == 413
    error = answer.get_json()["error"]
    assert "more than 1000 parts" in error and "larger than" not in error
    fine, content_type = raw_form([(b'Content-Disposition: form-data; name="image"; '
                                    b'filename="p.png"', image_bytes())])
    assert client.post("/depth", data=fine, content_type=content_type).status_code == 202


def test_a_form_over_the_size_limit_is_a_413_that_says_so(make_client, scripted):
    client = make_client({"lotus": scripted}, max_content_length=4096)
    body, content_type = raw_form([(b'Content-Disposition: form-data; name="image"; '
                                    b'filename="p.png"', b"x" * 5000)])
    answer = client.post("/depth", data=body, content_type=content_type)
    assert answer.status_code == 413 and "larger than 4096 bytes" in answer.get_json()["error"]
    chunked = client.post("/depth", input_stream=io.BytesIO(body), content_type=content_type)
    assert chunked.status_code == 413 and "larger than 4096" in chunked.get_json()["error"]


def test_masks_as_files_and_text_keep_the_order_sent(client):
    """Issue 31 item 11: objects[i] is made from the i-th mask, whatever kind of part it came
    in; text parts used to go first."""
    import sys

    left, right, middle = (np.zeros((48, 64), np.uint8) for _ in range(3))
    left[:, :20], middle[:, 22:42], right[:, 44:] = 255, 255, 255
    sent = [(left, "file"), (right, "text"), (middle, "file")]

    def png(mask):
        buffer = io.BytesIO()
        Image.fromarray(mask, "L").save(buffer, format="PNG")
        return buffer.getvalue()

    parts = [(b'Content-Disposition: form-data; name="image"; filename="p.png"',
              image_bytes(width=64, height=48)),
             (b'Content-Disposition: form-data; name="output_format"', b"ply")]
    for mask, kind in sent:
        if kind == "file":
            parts.append((b'Content-Disposition: form-data; name="masks"; filename="m.png"',
                          png(mask)))
        else:
            parts.append((b'Content-Disposition: form-data; name="masks"',
                          base64.b64encode(png(mask))))
    calls = sys.modules["sam3d_objects.pipeline.inference_pipeline"].CALLS
    calls.clear()
    body, content_type = raw_form(parts)
    answer = client.post("/generate/sync", data=body, content_type=content_type)
    assert answer.status_code == 200, answer.get_json()
    seen = [call["alpha"] > 0 for call in calls]
    assert len(seen) == 3
    for alpha, (mask, _) in zip(seen, sent):
        assert (alpha == (mask > 0)).mean() > 0.95


def test_a_retried_form_upload_with_its_idempotency_key_makes_one_job(client):
    """curl picks a new multipart boundary on every try; the key still finds the job."""
    answers = [client.post("/depth", headers={"Idempotency-Key": "photo-1"}, data={
        "image": (io.BytesIO(image_bytes()), "p.png"), "seed": "3"},
        content_type=f"multipart/form-data; boundary=try{attempt}") for attempt in range(2)]
    assert [a.status_code for a in answers] == [202, 200]
    assert answers[0].get_json()["job_id"] == answers[1].get_json()["job_id"]
    other = client.post("/depth", headers={"Idempotency-Key": "photo-1"}, data={
        "image": (io.BytesIO(image_bytes()), "p.png"), "seed": "4"},
        content_type="multipart/form-data")
    assert other.status_code == 422
