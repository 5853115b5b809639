"""The RunPod worker, through the runpod SDK's own local modes, on the tiny Lotus-D."""

import ast
import base64
import io
import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
import requests
import torch
import trimesh
from PIL import Image

from conftest import ROOT, SAM3D_STAND_IN, image_b64, sam3d_checkpoints, wait_until
from handler import Handler
from pipelines.lotus import Lotus
from pipelines.sam3d_parts.masks import Masker
from pipelines.sam3d import Sam3DObjects
from settings import load_settings

KEY = "worker-key-0123456789"


@pytest.fixture
def env(tmp_path, checkpoints):
    return {**os.environ, "LOTUS_API_KEY": KEY, "CHECKPOINTS_DIR": str(checkpoints),
            "PIPELINES": "lotus", "OUTPUT_DIR": str(tmp_path / "out"), "PYTHONUNBUFFERED": "1"}


def local_test(env, job_input) -> tuple[dict | str, str]:
    """`python handler.py --test_input ...`: the job's output (or the SDK's failure message,
    for an answer with an "error" key) and everything logged."""
    done = subprocess.run([sys.executable, "handler.py", "--test_input",
                           json.dumps({"input": job_input})], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=180)
    log = done.stdout + done.stderr
    for line in log.splitlines():
        if "Job result:" in line:  # the SDK prints the result's repr
            return ast.literal_eval(line.split("Job result:", 1)[1].strip())["output"], log
        if "failed with error:" in line:
            return line.split("failed with error:", 1)[1].strip(), log
    raise AssertionError(log[-3000:])


def test_sdk_test_input_mode_runs_a_depth_job(env, tmp_path):
    result, log = local_test(env, {"api_key": KEY, "image_base64": image_b64(width=40, height=30),
                                   "processing_res": 64, "disparity": True})
    output = result
    png = Image.open(io.BytesIO(base64.b64decode(output["image_base64"])))
    assert png.size == (40, 30) and png.mode == "L"
    assert 0 <= output["min"] <= output["max"] <= 1
    assert output["file_path"].startswith(str(tmp_path / "out"))
    assert KEY not in log


def test_sdk_test_input_mode_refuses_a_wrong_key_without_logging_it(env):
    result, log = local_test(env, {"api_key": "guess", "image_base64": image_b64()})
    assert result == "Unauthorized"
    assert KEY not in log and "guess" not in log


@pytest.fixture(scope="module")
def local_api(tmp_path_factory, checkpoints):
    """The SDK's local API server (`--rp_serve_api`) on a loopback port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "LOTUS_API_KEY": KEY, "CHECKPOINTS_DIR": str(checkpoints),
           "PIPELINES": "lotus", "OUTPUT_DIR": str(tmp_path_factory.mktemp("out"))}
    log = tmp_path_factory.mktemp("log") / "worker.log"
    with open(log, "w") as sink:
        process = subprocess.Popen([sys.executable, "handler.py", "--rp_serve_api",
                                    "--rp_api_port", str(port), "--rp_api_host", "127.0.0.1"],
                                   cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"

        def up():
            assert process.poll() is None, log.read_text()
            try:
                return requests.get(f"{url}/docs", timeout=1).status_code == 200
            except requests.RequestException:
                return False

        try:
            wait_until(up, timeout=120, interval=0.3)
            yield url, log
        finally:
            process.terminate()
            process.wait(30)


def runsync(url, job_input):
    response = requests.post(f"{url}/runsync", json={"input": job_input}, timeout=120)
    response.raise_for_status()
    return response.json()


def oversize_png_b64():
    buffer = io.BytesIO()
    Image.new("L", (4097, 8)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


ERRORS = [
    ({"image_base64": "x"}, 401, "Unauthorized"),
    ({"api_key": "wrong", "image_base64": "x"}, 401, "Unauthorized"),
    ({"api_key": KEY, "image_base64": "@@not base64@@"}, 400, "not valid base64"),
    ({"api_key": KEY, "image_base64": base64.b64encode(b"plain text").decode()}, 400,
     "not a supported image"),
    ({"api_key": KEY, "image_base64": oversize_png_b64()}, 400, "4096x4096"),
    ({"api_key": KEY, "image_base64": "AAAA", "colour": "red"}, 400, "colour"),
    ({"api_key": KEY, "image_base64": "AAAA", "processing_res": "big"}, 400, "processing_res"),
    ({"api_key": KEY, "image_base64": "AAAA", "task": "video"}, 400, "task"),
    ({"api_key": KEY, "image_base64": image_b64(), "processing_res": 4096}, 400,
     "processing_res 4096 would upscale"),
    ({"api_key": KEY, "image_base64": "AAAA", "task": "3d"}, 400, "not served"),
    ({"api_key": KEY, "image_url": "http://169.254.169.254/latest/meta-data/"}, 400,
     "private or reserved"),
    ({"api_key": KEY, "image_base64": "AAAA", "model_id": "other/model"}, 400, "own endpoint"),
]


@pytest.mark.parametrize("job_input, status, message", ERRORS)
def test_local_api_errors_are_clear_and_the_worker_keeps_serving(local_api, job_input, status,
                                                                 message):
    """RunPod turns an answer with "error" into a FAILED job carrying that message."""
    url, log = local_api
    answer = runsync(url, job_input)
    assert answer["status"] == "FAILED" and message in answer["error"], answer
    good = runsync(url, {"api_key": KEY, "image_base64": image_b64(), "processing_res": 32})
    assert good["output"]["image_base64"] and good["status"] == "COMPLETED"
    assert KEY not in log.read_text()


def test_an_unset_lotus_api_key_refuses_every_job(tmp_path, checkpoints, monkeypatch):
    monkeypatch.delenv("LOTUS_API_KEY", raising=False)
    worker = Handler(load_settings(output_dir=tmp_path), {})
    answer = worker.handle({"id": "j", "input": {"api_key": "", "image_base64": image_b64()}})
    assert answer["status"] == 401 and "LOTUS_API_KEY is not set" in answer["error"]


@pytest.fixture
def worker(tmp_path, checkpoints, monkeypatch):
    monkeypatch.setenv("LOTUS_API_KEY", KEY)
    lotus = Lotus(checkpoints)
    sam3d = Sam3DObjects(sam3d_checkpoints(tmp_path / "ck"), SAM3D_STAND_IN,
                         masker=Masker(None), vram_gib=40.0)
    lotus.load()
    sam3d.load()
    return Handler(load_settings(output_dir=tmp_path / "out"), {"lotus": lotus, "sam3d": sam3d})


@pytest.mark.parametrize("job_input, status, message", ERRORS)
def test_the_handler_answers_errors_with_the_plans_status_codes(worker, job_input, status,
                                                               message):
    depth_only = Handler(worker.settings, {"lotus": worker.pipelines["lotus"]})
    answer = depth_only.handle({"id": "e", "input": job_input})
    assert answer["status"] == status and message in answer["error"]


def test_a_3d_task_returns_the_model_file(worker):
    answer = worker.handle({"id": "job3d", "input": {
        "api_key": KEY, "task": "3d", "image_base64": image_b64(), "output_format": "glb"}})
    assert base64.b64decode(answer["model_base64"])[:4] == b"glTF"
    assert answer["media_type"] == "model/gltf-binary"


def mask_b64(left, right, width=64, height=48):
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[:, left:right] = 255
    buffer = io.BytesIO()
    Image.fromarray(mask).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_a_3d_task_takes_masks_and_answers_a_placed_scene_in_any_format(worker, tmp_path):
    answer = worker.handle({"id": "scene", "input": {
        "api_key": KEY, "task": "3d", "image_base64": image_b64(), "output_format": "stl",
        "masks": [mask_b64(0, 20), mask_b64(40, 64)]}})
    assert answer["media_type"] == "model/stl" and len(answer["objects"]) == 2
    assert all(len(obj["rotation"]) == 4 and obj["faces"] > 0 for obj in answer["objects"])
    mesh = trimesh.load(io.BytesIO(base64.b64decode(answer["model_base64"])), file_type="stl")
    assert len(mesh.faces) == answer["faces"]


def test_a_3d_task_with_a_bad_mask_is_a_400(worker):
    answer = worker.handle({"id": "bad", "input": {
        "api_key": KEY, "task": "3d", "image_base64": image_b64(),
        "mask": mask_b64(0, 0)}})
    assert answer["status"] == 400 and "mask is empty" in answer["error"]


def test_results_over_the_payload_limit_come_back_by_path(worker):
    worker.max_inline_bytes = 100
    answer = worker.handle({"id": "big", "input": {
        "api_key": KEY, "image_base64": image_b64(), "processing_res": 32, "output": "npy"}})
    assert "image_base64" not in answer and "over the inline limit" in answer["message"]
    assert os.path.getsize(answer["file_path"]) > 100


def test_warmup_runs_in_the_serving_process_and_a_failed_load_is_answered(env, tmp_path):
    job = {"api_key": KEY, "image_base64": image_b64(), "processing_res": 32}
    done = subprocess.run([sys.executable, "handler.py", "--warmup", "--test_input",
                           json.dumps({"input": job})], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=180)
    log = done.stdout + done.stderr
    assert done.returncode == 0 and "warm-up done" in log and "completed successfully" in log
    broken = {**env, "CHECKPOINTS_DIR": str(tmp_path / "empty")}
    result, log = local_test(broken, job)
    assert "model 'lotus' failed to load on this worker" in result


def test_plain_python_handler_py_runs_test_input_json(env, tmp_path):
    """Off RunPod the SDK runs ./test_input.json (rp_local.py:27-32): the repository's own."""
    shutil.copy(ROOT / "test_input.json", tmp_path / "test_input.json")
    job = json.loads((ROOT / "test_input.json").read_text())
    done = subprocess.run([sys.executable, str(ROOT / "handler.py")], cwd=tmp_path,
                          env={**env, "LOTUS_API_KEY": job["input"]["api_key"],
                               "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "completed successfully" in done.stdout + done.stderr


def record_batches(lotus, calls: list[int], monkeypatch) -> None:
    """Lotus-D's model, counting the images of each forward pass into `calls`."""
    model = lotus.model

    class Recording:
        generators = model.generators

        def __call__(self, images, **options):
            calls.append(len(images))
            return model(images, **options)

    monkeypatch.setitem(lotus.models, "depth-d-v2-0-disparity", Recording())


def test_images_give_one_result_each_in_order_through_the_batch_path(worker, monkeypatch):
    lotus, calls = worker.pipelines["lotus"], []
    record_batches(lotus, calls, monkeypatch)
    sizes = [(40, 30), (40, 30), (20, 50)]
    answer = worker.handle({"id": "b", "input": {
        "api_key": KEY, "processing_res": 32, "latent": "mode",
        "images": [image_b64(width=w, height=h, seed=i) for i, (w, h) in enumerate(sizes)]}})
    assert [(r["width"], r["height"]) for r in answer["results"]] == sizes
    assert sorted(calls) == [1, 2]  # the two 40x30 images went through the model together
    single = worker.handle({"id": "s", "input": {
        "api_key": KEY, "processing_res": 32, "latent": "mode",
        "image_base64": image_b64(width=40, height=30, seed=1)}})
    assert single["image_base64"] == answer["results"][1]["image_base64"]


@pytest.mark.parametrize("images, message", [
    ([], "images must be a list of 1 to 16"), ("abc", "images must be a list"),
    (["not base64!"], "images[0]"), ([image_b64(), 7], "images[1]"),
])
def test_a_bad_images_list_is_a_400_naming_the_item(worker, images, message):
    answer = worker.handle({"id": "b", "input": {"api_key": KEY, "images": images}})
    assert answer["status"] == 400 and message in answer["error"]


def test_old_result_files_expire(worker, tmp_path):
    folder = worker.settings.output_dir
    folder.mkdir(parents=True, exist_ok=True)
    stale, fresh = folder / "stale.png", folder / "fresh.png"
    stale.write_bytes(b"x"), fresh.write_bytes(b"x")
    os.utime(stale, (1, 1))
    worker.handle({"id": "t", "input": {"api_key": KEY, "image_base64": image_b64(),
                                        "processing_res": 32}})
    assert not stale.exists() and fresh.exists()


def test_bucket_upload_needs_every_setting_and_says_what_is_missing(monkeypatch, caplog):
    from serverless.answers import bucket_name

    for name in ("BUCKET_ENDPOINT_URL", "BUCKET_ACCESS_KEY_ID", "BUCKET_SECRET_ACCESS_KEY",
                 "BUCKET_NAME"):
        monkeypatch.setenv(name, "set")
    assert bucket_name() == "set"
    monkeypatch.delenv("BUCKET_NAME")
    assert bucket_name() is None and "BUCKET_NAME not set" in caplog.text


def test_stages_go_to_runpod_only_on_runpod(worker, monkeypatch):
    import runpod.serverless

    sent = []
    monkeypatch.setattr(runpod.serverless, "progress_update", lambda job, p: sent.append(p))
    job = {"id": "p", "input": {"api_key": KEY, "image_base64": image_b64(),
                                "processing_res": 32}}
    worker.handle(dict(job))
    assert sent == []
    monkeypatch.setenv("RUNPOD_WEBHOOK_GET_JOB", "https://api.runpod.ai/v2/x/job-take/$ID")
    worker.handle(dict(job))
    assert [update["stage"] for update in sent] == ["encoding", "predicting", "decoding",
                                                    "writing"]


def test_an_input_that_is_not_an_object_is_a_400(worker):
    assert worker.handle({"id": "x", "input": "just text"}) == {
        "error": "input must be a JSON object", "status": 400}


class Failing:
    """A pipeline that fails the way the GPU does."""

    name = "lotus"
    oom_advice = "Try a smaller processing_res."

    def __init__(self, error):
        self.error = error

    def check(self, options):
        pass

    def run(self, *args):
        raise self.error


@pytest.mark.parametrize("error, status, refresh", [
    (RuntimeError("the model broke"), 500, False),
    (RuntimeError("CUDA error: an illegal memory access was encountered"), 500, True),
    (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"), 507, False),
])
def test_any_failure_is_an_answer_and_a_broken_gpu_asks_for_a_new_worker(
        tmp_path, monkeypatch, error, status, refresh):
    monkeypatch.setenv("LOTUS_API_KEY", KEY)
    worker = Handler(load_settings(output_dir=tmp_path), {"lotus": Failing(error)})
    answer = worker.handle({"id": "j", "input": {"api_key": KEY, "image_base64": image_b64()}})
    assert answer["status"] == status and "Traceback" not in answer["error"]
    assert answer.get("refresh_worker", False) is refresh
    assert ("smaller processing_res" in answer["error"]) is (status == 507)


@pytest.mark.parametrize("task", [["depth"], {"a": 1}, 3, None])
def test_a_task_that_is_not_a_name_is_a_400(tmp_path, monkeypatch, task):
    monkeypatch.setenv("LOTUS_API_KEY", KEY)
    worker = Handler(load_settings(output_dir=tmp_path), {"lotus": Failing(RuntimeError())})
    answer = worker.handle({"id": "j", "input": {"api_key": KEY, "task": task,
                                                 "image_base64": image_b64()}})
    assert answer == {"error": "task must be one of depth, normal, 3d", "status": 400}


@pytest.mark.parametrize("job_id", ["../x", "../../etc/cron.d/x", "a/b", "..", "", "x" * 200,
                                    "sync-0f1e2d3c-aaaa-bbbb-cccc-1234567890ab-u1"])
def test_a_job_id_never_writes_outside_output_dir(worker, job_id):
    answer = worker.handle({"id": job_id, "input": {"api_key": KEY, "image_base64": image_b64(),
                                                    "processing_res": 32}})
    written = os.path.realpath(answer["file_path"])
    assert os.path.dirname(written) == os.path.realpath(worker.settings.output_dir)
    if job_id.startswith("sync-"):  # RunPod's own ids keep their name
        assert os.path.basename(written) == f"{job_id}.png"


def test_keys_are_trimmed_alike_and_a_blank_key_refuses_everything(worker, monkeypatch):
    """The key comes through Settings, read when the worker starts (as the HTTP server's)."""
    def started_with(key):
        monkeypatch.setenv("LOTUS_API_KEY", key)
        return Handler(load_settings(output_dir=worker.settings.output_dir), worker.pipelines)

    job = {"id": "j", "input": {"api_key": f"{KEY} ", "image_base64": image_b64(),
                                "processing_res": 32}}
    assert "error" not in started_with(f"  {KEY}\n").handle(job)
    answer = started_with("  \n").handle(job)
    assert answer["status"] == 401 and "LOTUS_API_KEY is not set" in answer["error"]


def test_concurrent_depth_jobs_share_one_forward_pass_each_with_its_own_seed(
        worker, monkeypatch):
    """runpod-python hands `concurrency` jobs to the async handler at once (rp_scale.py);
    same-size depth jobs then run as one batch through the queue's lane, and each equals
    its own single run."""
    import asyncio

    import handler as module

    monkeypatch.setattr(module, "GATHER_SECONDS", 0.3)  # every call is in before the pass
    batching = module.Handler(load_settings(output_dir=worker.settings.output_dir,
                                            depth_batch=4), worker.pipelines)
    monkeypatch.setattr(module, "_handler", batching)
    assert module.concurrency(1) == 4
    lotus, calls = worker.pipelines["lotus"], []
    record_batches(lotus, calls, monkeypatch)
    jobs = [{"id": f"j{seed}", "input": {"api_key": KEY, "image_base64": image_b64(seed=seed),
                                         "seed": seed, "output": "npy"}} for seed in range(4)]

    async def together():
        return await asyncio.gather(*(module.handler(job) for job in jobs))

    answers = asyncio.run(together())
    assert calls == [4]
    for job, answer in zip(jobs, answers):
        alone = worker.handle({**job, "id": job["id"] + "-alone"})
        batched, single = (np.load(io.BytesIO(base64.b64decode(a["image_base64"])))
                           for a in (answer, alone))
        # Batched CPU convolutions differ in the last bits: up to 6.8e-5 measured here at
        # 768 px (2.9e-6 at a photo's native size); 5e-4 is an eighth of one 8-bit PNG level.
        np.testing.assert_allclose(batched, single, atol=5e-4)
    assert calls == [4, 1, 1, 1, 1]


def test_a_full_output_dir_is_a_507_as_over_http(worker, monkeypatch):
    """The queue refuses work while its folder cannot take results; the answer says so with
    the HTTP path's status, not a 500."""
    monkeypatch.setattr(worker.queue._recorder, "problem", "OUTPUT_DIR is full (12 MB free)")
    answer = worker.handle({"id": "full", "input": {"api_key": KEY, "image_base64": image_b64(),
                                                    "processing_res": 32}})
    assert answer == {"error": "OUTPUT_DIR is full (12 MB free)", "status": 507}
