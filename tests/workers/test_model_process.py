"""A model worker's life, with a real child process on the tiny Lotus-D: a load that fails
after a crash is retried, a progress report that fails never leaves the pipe out of step,
and the queue survives what the disk and a lost worker throw at it."""

import shutil
import threading
from pathlib import Path

import pytest
from PIL import Image

from conftest import wait_until
from pipelines.base import Result
from pipelines.lotus import CHECKPOINT_FOLDER, DepthRequest
from queue_manager import JobQueue, JobState
from settings import load_settings
from stand_ins import ScriptedPipeline
from workers.devices import Device
from workers.model_process import ModelProcess
from workers.worker import WorkerLost, WorkerState
from workers.pool import RemotePipeline

PHOTO = Image.new("RGB", (40, 32), (90, 120, 150))


@pytest.fixture
def worker(tmp_path, checkpoints):
    shutil.copytree(checkpoints / CHECKPOINT_FOLDER, tmp_path / "ck" / CHECKPOINT_FOLDER)
    settings = load_settings(checkpoints_dir=tmp_path / "ck", pipelines="lotus")
    made = ModelProcess(settings, "lotus", Device("cpu", 0))
    made.start()
    wait_until(lambda: made.state == "ready", timeout=120, interval=0.1)
    yield made
    made.stop()


def depth(worker, stem: Path, progress=lambda stage, fraction: None):
    return worker.run([(DepthRequest(image="x", processing_res=0), PHOTO, stem)], progress,
                      [stem.name])[0]


def test_a_load_that_fails_after_a_crash_is_retried_until_it_works(worker, tmp_path):
    folder = tmp_path / "ck" / CHECKPOINT_FOLDER
    folder.rename(folder.with_name("away"))
    first = worker.describe()["pid"]
    worker._process.kill()  # a crash; the reload finds no checkpoint
    wait_until(lambda: "failed to load again" in (worker.reason or ""), timeout=60)
    assert worker.state == "restarting"
    folder.with_name("away").rename(folder)
    wait_until(lambda: worker.state == "ready", timeout=120, interval=0.1)
    assert worker.describe()["pid"] != first
    assert isinstance(depth(worker, tmp_path / "after"), Result)


def test_a_failing_progress_report_never_hands_the_next_job_this_ones_result(worker, tmp_path):
    def broken(stage, fraction):
        raise OSError("read-only file system")

    first = depth(worker, tmp_path / "a", broken)  # the job goes on without its reports
    assert first.path.name.startswith("a")
    second = depth(worker, tmp_path / "b")
    assert second.path.name.startswith("b")

    class Escape(BaseException):
        pass

    def escaping(stage, fraction):
        raise Escape()

    with pytest.raises(Escape):
        depth(worker, tmp_path / "c", escaping)
    wait_until(lambda: worker.state == "ready", timeout=120, interval=0.1)  # started over
    third = depth(worker, tmp_path / "d")
    assert third.path.name.startswith("d")


class StubWorker:
    """A stand-in model worker: its state, and what its first load did."""

    def __init__(self, state, loaded=True):
        self.state, self.reason, self.details = state, "a reason", {}
        self.loaded = threading.Event()
        if loaded:
            self.loaded.set()


def test_a_pipeline_is_ready_once_any_worker_is():
    stuck = StubWorker(WorkerState.RESTARTING, loaded=False)  # keeps dying while it loads
    ready = StubWorker(WorkerState.READY)
    RemotePipeline(ScriptedPipeline(), [stuck, ready]).load()  # returns at once
    failed = [StubWorker(WorkerState.FAILED), StubWorker(WorkerState.FAILED)]
    with pytest.raises(RuntimeError, match="a reason"):
        RemotePipeline(ScriptedPipeline(), failed).load()


class LosesItsFirstJob:
    """A model worker whose process is found gone when the first job is sent."""

    label, batch_limit, state, jobs = "flaky", 1, WorkerState.READY, []

    def __init__(self, pipeline):
        self.pipeline, self.sent = pipeline, 0

    def run(self, items, progress, job_ids, time_limit=None):
        self.sent += 1
        if self.sent == 1:
            raise WorkerLost("gone before the job ran")
        options, image, stem = items[0]
        return [self.pipeline.run(options, image, stem, progress)]

    def describe(self):
        return {}

    def stop(self):
        pass


def test_a_job_handed_back_keeps_its_image_and_runs(tmp_path):
    pipeline = ScriptedPipeline()
    pipeline.actions[1] = "block"
    worker = LosesItsFirstJob(pipeline)
    queue = JobQueue({"lotus": pipeline}, tmp_path / "out", workers={"lotus": [worker]})
    kept = []
    queue.start()
    try:
        real_keep = queue._journal.keep_input
        queue._journal.keep_input = lambda job: (kept.append(job.id), real_keep(job))
        view = queue.submit("lotus", (DepthRequest(image="x", seed=1), PHOTO))
        assert pipeline.started.get(timeout=10) == 1  # the second try runs
        assert kept == [view.id, view.id]  # kept at submission, and again when handed back
        assert queue._journal.input_path(view.id).exists() is False  # running again: gone
        pipeline.release.set()
        assert queue.wait(view.id, 10).state is JobState.COMPLETED
    finally:
        pipeline.release.set()
        queue.stop()


def test_a_kept_image_that_cannot_be_removed_stops_no_job(tmp_path):
    pipeline = ScriptedPipeline()
    queue = JobQueue({"lotus": pipeline}, tmp_path / "out")
    queue.start()
    try:
        folder = tmp_path / "a-folder"
        folder.mkdir()
        queue._journal.keep_input = lambda job: None
        queue._journal.input_path = lambda job_id: folder  # unlink() of it raises OSError
        views = [queue.submit("lotus", (DepthRequest(image="x", seed=seed), PHOTO))
                 for seed in range(3)]
        assert all(queue.wait(view.id, 10).state is JobState.COMPLETED for view in views)
        assert queue.dispatchers_alive() == queue.dispatchers_expected()
    finally:
        queue.stop()


def test_a_forced_cancel_that_arrives_after_its_job_ended_kills_nothing(worker, tmp_path):
    stem = tmp_path / "done"
    depth(worker, stem)
    pid = worker.describe()["pid"]
    worker.abort("done")  # the job ended before the forced cancel arrived
    assert worker.state == "ready" and worker.describe()["pid"] == pid


def test_a_job_still_running_when_the_server_stops_waits_for_the_next_start(worker, tmp_path):
    pipeline = ScriptedPipeline()  # stands in for the twin: the worker runs the real model
    out = tmp_path / "out"
    queue = JobQueue({"lotus": pipeline}, out, workers={"lotus": [worker]})
    queue.start()
    photo = Image.new("RGB", (1024, 768), (90, 120, 150))
    view = queue.submit("lotus", (DepthRequest(image="x", processing_res=2048), photo))
    wait_until(lambda: queue.get(view.id).state is JobState.PROCESSING, timeout=30)
    queue.stop(timeout=0.5)  # SIGTERM's graceful time ran out
    assert queue._index.find(view.id).state is JobState.QUEUED
    again = JobQueue({"lotus": pipeline}, out)  # the next start, on the same folder
    again.start()
    try:
        assert again.wait(view.id, 10).state is JobState.COMPLETED
    finally:
        again.stop()


def test_a_model_process_is_given_no_secret(tmp_path, checkpoints, monkeypatch):
    """Issue 30: the Settings were pickled whole into every child, the API keys and the
    webhook secret with them. What the spawn sends a child (multiprocessing's
    reduction.dump, recorded on its way) holds what its pipeline is built from, no secret;
    the child still loads its model from it."""
    import base64
    import multiprocessing.reduction as reduction

    secrets = {"api_key": "http-key-" + "a1" * 12, "lotus_api_key": "runpod-key-" + "b2" * 12,
               "webhook_secret": "whsec_" + base64.b64encode(b"c3" * 16).decode()}
    settings = load_settings(checkpoints_dir=checkpoints, pipelines="lotus", **secrets)
    sent, real_dump = [], reduction.dump

    def recording(obj, file, protocol=None):  # the spawn pickles into a BytesIO it then sends
        real_dump(obj, file, protocol)
        sent.append(file.getvalue())

    monkeypatch.setattr(reduction, "dump", recording)
    made = ModelProcess(settings, "lotus", Device("cpu", 0))
    made.start()
    try:
        wait_until(lambda: made.state is WorkerState.READY, timeout=120, interval=0.1)
    finally:
        made.stop()
    assert any(checkpoints.name.encode() in data for data in sent)  # the child's arguments
    for value in secrets.values():
        assert not any(value.encode() in data for data in sent), value[:8]
