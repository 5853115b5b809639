"""The job queue: state machine, bounds, positions, workers, failures, cancellation, expiry."""

import threading
import time

import pytest
from PIL import Image

from conftest import wait_until
from pipelines.errors import FailureKind
from pipelines.lotus import DepthRequest
from queue_manager import (JobExpired, JobNotFound, JobQueue, JobState, NotCancellable,
                           QueueFull)

IMAGE = Image.new("RGB", (8, 8))


def options(seed):
    return DepthRequest(image="x", seed=seed)


@pytest.fixture
def make_queue(tmp_path, scripted):
    queues = []

    def factory(**kwargs):
        kwargs.setdefault("max_queue_size", 10)
        kwargs.setdefault("max_concurrent", 1)
        queue = JobQueue({"lotus": scripted}, tmp_path / "out", janitor_interval=0.05, **kwargs)
        queue.start()
        queues.append(queue)
        return queue

    yield factory
    scripted.release.set()
    for queue in queues:
        queue.stop()


def submit(queue, seed):
    return queue.submit("lotus", (options(seed), IMAGE))


def test_job_runs_to_completion_and_writes_its_file(make_queue):
    queue = make_queue()
    view = submit(queue, 1)
    assert view.state is JobState.QUEUED
    done = queue.wait(view.id, 10)
    assert done.state is JobState.COMPLETED and done.position == 0 and done.progress == 1.0
    assert done.result.path.read_bytes() == b"seed=1 size=(8, 8)"
    assert done.processing_time is not None and done.processing_time >= 0



def test_a_lane_reports_the_mean_time_of_its_completed_jobs_only(make_queue, scripted):
    """What the web page's wait estimate is computed from: completed jobs count, a failed
    one (which says nothing of how long a job takes) does not."""
    queue = make_queue()
    assert queue.stats()["lanes"]["lotus"]["mean_seconds"] is None
    scripted.actions[3] = "fail"
    views = [queue.wait(submit(queue, seed).id, 10) for seed in (1, 2, 3)]
    assert [view.state for view in views] == [JobState.COMPLETED] * 2 + [JobState.FAILED]
    mean = (views[0].processing_time + views[1].processing_time) / 2
    assert queue.stats()["lanes"]["lotus"]["mean_seconds"] == pytest.approx(mean, abs=0.002)

def test_positions_count_every_job_ahead_including_the_running_one(make_queue, scripted):
    queue = make_queue()
    scripted.actions[1] = "block"
    first = submit(queue, 1)
    assert scripted.started.get(timeout=5) == 1
    second, third = submit(queue, 2), submit(queue, 3)
    assert (second.position, third.position) == (1, 2)
    assert queue.get(first.id).position == 0
    assert queue.get(third.id).queue_length == 3
    assert queue.stats() == {"queued": 2, "processing": 1, "max_queue_size": 10,
                             "max_concurrent": 1, "lanes": {"lotus": {
                                 "queued": 2, "processing": 1, "workers": 1,
                                 "ready_workers": 1, "mean_seconds": None}}}
    scripted.release.set()
    assert queue.wait(third.id, 10).state is JobState.COMPLETED
    assert [queue.get(v.id).position for v in (first, second, third)] == [0, 0, 0]


def test_queue_refuses_more_than_max_queue_size_waiting_jobs(make_queue, scripted):
    queue = make_queue(max_queue_size=2)
    scripted.actions[1] = "block"
    submit(queue, 1)
    scripted.started.get(timeout=5)  # running: no longer counts as waiting
    submit(queue, 2), submit(queue, 3)
    with pytest.raises(QueueFull):
        submit(queue, 4)
    scripted.release.set()
    wait_until(lambda: queue.stats()["queued"] == 0)
    assert submit(queue, 5)  # room again


def test_max_concurrent_really_runs_that_many_jobs_at_once(make_queue, scripted):
    queue = make_queue(max_concurrent=2)
    for seed in (1, 2, 3):
        scripted.actions[seed] = "block"
    views = [submit(queue, seed) for seed in (1, 2, 3)]
    assert {scripted.started.get(timeout=5), scripted.started.get(timeout=5)} == {1, 2}
    time.sleep(0.2)
    assert scripted.max_running == 2 and queue.stats()["processing"] == 2
    assert queue.get(views[2].id).position == 2
    scripted.release.set()
    for view in views:
        assert queue.wait(view.id, 10).state is JobState.COMPLETED
    assert scripted.max_running == 2


def test_one_worker_never_runs_two_jobs_at_once(make_queue, scripted):
    queue = make_queue(max_concurrent=1)
    views = [submit(queue, seed) for seed in range(5)]
    for view in views:
        assert queue.wait(view.id, 10).state is JobState.COMPLETED
    assert scripted.max_running == 1


def test_a_failing_pipeline_fails_only_its_job(make_queue, scripted):
    queue = make_queue()
    scripted.actions[1] = "fail"
    failed, after = submit(queue, 1), submit(queue, 2)
    failed = queue.wait(failed.id, 10)
    assert failed.state is JobState.FAILED
    assert "the model broke" in failed.error and failed.error_kind is FailureKind.INTERNAL
    assert queue.wait(after.id, 10).state is JobState.COMPLETED


def test_client_errors_raised_by_a_pipeline_keep_their_status(make_queue, scripted):
    queue = make_queue()
    scripted.actions[1] = "invalid"
    view = queue.wait(submit(queue, 1).id, 10)
    assert view.state is JobState.FAILED and view.error_kind is FailureKind.INVALID_INPUT
    assert view.error == "this image has no object in it"


def test_out_of_memory_fails_the_job_with_advice_and_the_next_job_runs(make_queue, scripted):
    queue = make_queue()
    scripted.actions[1] = "oom"
    oom, after = submit(queue, 1), submit(queue, 2)
    oom = queue.wait(oom.id, 10)
    assert oom.state is JobState.FAILED and oom.error_kind is FailureKind.OUT_OF_MEMORY
    assert "Out of GPU memory" in oom.error and "processing_res" in oom.error
    assert queue.wait(after.id, 10).state is JobState.COMPLETED


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_dead_worker_is_replaced_and_its_job_marked_failed(make_queue, scripted):
    queue = make_queue()
    scripted.actions[1] = "die"
    dead, after = submit(queue, 1), submit(queue, 2)
    dead = queue.wait(dead.id, 10)
    assert dead.state is JobState.FAILED and "crashed" in dead.error
    assert queue.wait(after.id, 10).state is JobState.COMPLETED
    assert queue.dispatchers_alive() == 1


def test_cancel_a_queued_job_removes_it_from_the_line(make_queue, scripted):
    queue = make_queue()
    scripted.actions[1] = "block"
    first = submit(queue, 1)
    scripted.started.get(timeout=5)
    second, third = submit(queue, 2), submit(queue, 3)
    assert queue.cancel(second.id).state is JobState.CANCELLED
    assert queue.get(third.id).position == 1
    scripted.release.set()
    assert queue.wait(third.id, 10).state is JobState.COMPLETED
    assert queue.get(second.id).state is JobState.CANCELLED
    assert not any(p.name.startswith(second.id) for p in queue.output_dir.iterdir())
    assert queue.get(first.id).state is JobState.COMPLETED


def result_files(queue):
    """What jobs wrote (the journal keeps its own dot-files beside them)."""
    return [path for path in queue.output_dir.iterdir() if not path.name.startswith(".")]


def test_cancel_a_running_job_stops_it_at_its_next_stage_and_leaves_no_file(make_queue, scripted):
    queue = make_queue()
    scripted.actions[1] = "block"
    running = submit(queue, 1)
    scripted.started.get(timeout=5)
    view = queue.cancel(running.id)
    assert view.state is JobState.PROCESSING and view.cancel_requested
    scripted.release.set()
    assert queue.wait(running.id, 10).state is JobState.CANCELLED
    assert result_files(queue) == [] and list((queue.output_dir / ".inputs").iterdir()) == []


def test_finished_jobs_cannot_be_cancelled(make_queue):
    queue = make_queue()
    view = queue.wait(submit(queue, 1).id, 10)
    with pytest.raises(NotCancellable):
        queue.cancel(view.id)


def test_finished_jobs_expire_with_their_files(make_queue):
    queue = make_queue(result_ttl_seconds=0.3)
    view = queue.wait(submit(queue, 1).id, 10)
    path = view.result.path
    assert path.exists()
    wait_until(lambda: not path.exists(), timeout=5)
    with pytest.raises(JobExpired):
        queue.get(view.id)


def test_unknown_and_malformed_ids_are_not_found(make_queue):
    queue = make_queue()
    for job_id in ("0" * 32, "abc12345", "../../etc/passwd", "A" * 32, ""):
        with pytest.raises(JobNotFound):
            queue.get(job_id)


def test_job_ids_are_long_and_random(make_queue):
    queue = make_queue()
    ids = {submit(queue, seed).id for seed in range(10)}
    assert len(ids) == 10 and all(len(job_id) == 32 for job_id in ids)


def test_a_journal_that_knew_its_jobs_removes_files_no_job_owns(tmp_path, scripted):
    out = tmp_path / "out"
    first = JobQueue({"lotus": scripted}, out)
    first.start()
    kept = first.wait(submit(first, 1).id, 10)
    first.stop()
    orphan, temp, other = (out / ("a" * 32 + ".glb"), out / (".%s.png.x.tmp" % ("b" * 32)),
                           out / "keep.txt")
    for path in (orphan, temp, other):
        path.write_text("x")
    queue = JobQueue({"lotus": scripted}, out)
    queue.start()
    queue.stop()
    assert not orphan.exists() and not temp.exists() and other.exists()
    assert kept.result.path.exists()


def test_without_a_journal_result_files_come_back_as_completed_jobs(tmp_path, scripted):
    """A lost or emptied journal must never cost a user a result they were told was done."""
    out = tmp_path / "out"
    out.mkdir()
    lost, temp = out / ("a" * 32 + ".glb"), out / (".%s.png.x.tmp" % ("b" * 32))
    lost.write_bytes(b"glTF...")
    temp.write_text("half")
    queue = JobQueue({"lotus": scripted}, out)
    queue.start()
    try:
        view = queue.get("a" * 32)
        assert view.state is JobState.COMPLETED and view.result.path.read_bytes() == b"glTF..."
        assert view.result.media_type == "model/gltf-binary" and not temp.exists()
    finally:
        queue.stop()


def test_status_reads_stay_consistent_under_many_threads(make_queue, scripted):
    queue = make_queue(max_queue_size=50)
    views = [submit(queue, seed) for seed in range(20)]
    errors = []

    def poll():
        for _ in range(200):
            for view in views:
                current = queue.get(view.id)
                if current.state is JobState.QUEUED and current.position < 0:
                    errors.append(current)
                if current.state.finished and current.position != 0:
                    errors.append(current)

    threads = [threading.Thread(target=poll) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for view in views:
        assert queue.wait(view.id, 10).state is JobState.COMPLETED


def test_a_restart_keeps_results_runs_queued_jobs_and_fails_interrupted_ones(tmp_path,
                                                                             scripted):
    """What the journal is for: the process dies with one job done, one running, one
    waiting; the next process on the same folder carries on."""
    from stand_ins import ScriptedPipeline

    out = tmp_path / "out"
    first = JobQueue({"lotus": scripted}, out)
    first.start()
    done = first.wait(submit(first, 1).id, 10)
    scripted.actions[2] = "block"
    running = submit(first, 2)
    assert scripted.started.get(timeout=5) == 1 and scripted.started.get(timeout=5) == 2
    waiting = submit(first, 3)
    first._journal.record = lambda job: None  # the process dies here: nothing more written
    first._dir_lock.release()  # and the kernel drops its lock on OUTPUT_DIR
    after = ScriptedPipeline()
    second = JobQueue({"lotus": after}, out)
    try:
        second.start()
        kept = second.get(done.id)
        assert kept.state is JobState.COMPLETED and kept.result.path.read_bytes()
        interrupted = second.get(running.id)
        assert interrupted.state is JobState.FAILED and "interrupted" in interrupted.error
        assert second.wait(waiting.id, 10).state is JobState.COMPLETED
        assert after.started.get(timeout=1) == 3  # the waiting job ran, the interrupted did not
        with pytest.raises(JobNotFound):
            second.get("0" * 32)
    finally:
        scripted.release.set()
        first.stop()
        second.stop()


def test_after_a_restart_an_expired_job_is_gone_not_unknown(tmp_path, scripted):
    out = tmp_path / "out"
    first = JobQueue({"lotus": scripted}, out, result_ttl_seconds=0.2)
    first.start()
    view = first.wait(submit(first, 1).id, 10)
    first.stop()
    time.sleep(0.3)
    for _ in range(2):  # known after this restart, and after the next one too
        later = JobQueue({"lotus": scripted}, out, result_ttl_seconds=0.2)
        later.start()
        try:
            with pytest.raises(JobExpired):
                later.get(view.id)
            assert not view.result.path.exists()
        finally:
            later.stop()


def test_a_waiting_job_keeps_its_photo_as_sent_and_runs_on_the_same_pixels_after_a_restart(
        tmp_path, scripted):
    """The journal keeps the JPEG a client sent, byte for byte (no re-encoding before the
    job is queued), and a restart decodes it to the pixels the first process decoded."""
    import base64
    import io

    import numpy as np

    from pipelines.images import ImageLimits
    from stand_ins import ScriptedPipeline

    photo = io.BytesIO()
    Image.effect_noise((96, 64), 60).convert("RGB").save(photo, "JPEG", quality=80)
    request = DepthRequest(image=base64.b64encode(photo.getvalue()).decode(), seed=2)
    inputs = request.load(ImageLimits(max_side=4096, url_max_bytes=10**6,
                                      url_timeout_seconds=1.0, allow_private_urls=False))
    out = tmp_path / "out"
    first = JobQueue({"lotus": scripted}, out)
    first.start()
    scripted.actions[1] = "block"
    submit(first, 1)
    assert scripted.started.get(timeout=5) == 1
    waiting = first.submit("lotus", inputs)
    assert first._journal.input_path(waiting.id).read_bytes() == photo.getvalue()
    first._journal.record = lambda job: None  # the process dies with the job waiting
    first._dir_lock.release()

    seen = []

    class Recording(ScriptedPipeline):
        def run(self, options, image, output_stem, progress):
            seen.append(np.asarray(image))
            return super().run(options, image, output_stem, progress)

    second = JobQueue({"lotus": Recording()}, out)
    try:
        second.start()
        assert second.wait(waiting.id, 10).state is JobState.COMPLETED
        assert np.array_equal(seen[0], np.asarray(inputs.image))
    finally:
        scripted.release.set()
        first.stop()
        second.stop()
