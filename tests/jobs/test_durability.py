"""Nothing a user was told is done may vanish: the journal after kill -9 and damage, rows it
cannot read, two servers on one folder, and expiry in batches."""

import base64
import logging
import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from PIL import Image

from jobs import housekeeping
from conftest import VIDEO_HEIGHT, VIDEO_WIDTH, make_video, tmpfs, wait_until
from jobs.journal import JOURNAL_NAME, Journal, JournalWriteError
from pipelines.lotus import DepthRequest
from pipelines.video import VideoLimits
from queue_manager import JobExpired, JobQueue, JobState
from settings import load_settings
from stand_ins import ScriptedPipeline
from jobs.storage import OutputDirInUse, storage_problem

CRASH = Path(__file__).resolve().parents[1] / "crash_queue.py"


def crash(out: Path, jobs: int = 3, video: Path | None = None) -> dict:
    """A queue process that finished `jobs` jobs, left one running and one waiting (a video
    with `video`), and was killed with SIGKILL: `finished` (id, file name) pairs, and the
    `running` and `waiting` ids."""
    env = {**os.environ, **({"VIDEO": str(video)} if video else {})}
    done = subprocess.run([sys.executable, str(CRASH), str(out), str(jobs)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == -9, done.stderr
    lines = [line.split() for line in done.stdout.splitlines()]
    named = {line[0]: line[1] for line in lines if line[0] in ("running", "waiting")}
    return {"finished": [tuple(line) for line in lines if line[0] not in named], **named}


def crashed_server(out: Path, jobs: int = 3) -> tuple[list[tuple[str, str]], str]:
    """The finished (id, file name) pairs and the waiting id of `crash`."""
    crashed = crash(out, jobs)
    return crashed["finished"], crashed["waiting"]


def damage_wal_lost(out):
    (out / f"{JOURNAL_NAME}-wal").unlink()
    (out / f"{JOURNAL_NAME}-shm").unlink(missing_ok=True)


def damage_wal_truncated(out):
    wal = out / f"{JOURNAL_NAME}-wal"
    wal.write_bytes(wal.read_bytes()[:100])


def damage_wal_garbage(out):
    wal = out / f"{JOURNAL_NAME}-wal"
    wal.write_bytes(b"\xde\xad\xbe\xef" * (wal.stat().st_size // 4))


def damage_main_zeroed(out):
    for name in (JOURNAL_NAME, f"{JOURNAL_NAME}-wal", f"{JOURNAL_NAME}-shm"):
        (out / name).write_bytes(b"")


def damage_main_garbage(out):
    (out / JOURNAL_NAME).write_bytes(b"this is not a database" * 500)
    (out / f"{JOURNAL_NAME}-wal").unlink()


def damage_main_truncated(out):
    """The main file cut to its first pages, as a full disk or a bad copy leaves it."""
    main = out / JOURNAL_NAME
    main.write_bytes(main.read_bytes()[:main.stat().st_size // 2])
    (out / f"{JOURNAL_NAME}-wal").unlink()


def damage_main_garbage_in_the_middle(out):
    """Every page after the first overwritten with noise; the header intact."""
    main = out / JOURNAL_NAME
    data = bytearray(main.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    data[page:] = (b"\xde\xad\xbe\xef" * len(data))[:len(data) - page]
    main.write_bytes(bytes(data))
    (out / f"{JOURNAL_NAME}-wal").unlink()


def damage_main_zeroed_header(out):
    main = out / JOURNAL_NAME
    data = main.read_bytes()
    main.write_bytes(bytes(100) + data[100:])
    (out / f"{JOURNAL_NAME}-wal").unlink()


def damage_main_zero_length(out):
    (out / JOURNAL_NAME).write_bytes(b"")
    (out / f"{JOURNAL_NAME}-wal").unlink()


DAMAGED_MAIN = (damage_main_zeroed, damage_main_garbage, damage_main_truncated,
                damage_main_garbage_in_the_middle, damage_main_zeroed_header,
                damage_main_zero_length)
DAMAGE = (damage_wal_lost, damage_wal_truncated, damage_wal_garbage, *DAMAGED_MAIN)


@pytest.mark.parametrize("damage", DAMAGE)
def test_after_kill_9_and_a_damaged_journal_no_accepted_job_is_lost(tmp_path, damage):
    """Issue 31 item 6: finished results stay (the files are trusted over the journal), the
    waiting job runs from its kept request and input, and the running one fails saying it
    was interrupted, as at any restart; none answers 404."""
    out = tmp_path / "out"
    crashed = crash(out)
    damage(out)
    pipeline = ScriptedPipeline()
    queue = JobQueue({"lotus": pipeline}, out)
    queue.start()
    try:
        for job_id, name in crashed["finished"]:
            view = queue.get(job_id)
            assert view.state is JobState.COMPLETED, (damage.__name__, view)
            assert view.result.path.name == name and view.result.path.read_bytes()
        waiting = queue.wait(crashed["waiting"], 10)
        assert waiting.state is JobState.COMPLETED, (damage.__name__, waiting.error)
        assert waiting.options.seed == 100 and pipeline.started.get(timeout=1) == 100
        running = queue.get(crashed["running"])
        assert running.state is JobState.FAILED and running.error.startswith("interrupted")
        if damage in DAMAGED_MAIN:  # moved aside, or found empty: said in /health
            assert queue.journal_notice is not None
        later = queue.submit("lotus", (DepthRequest(image="x"), Image.new("RGB", (8, 8))))
        assert queue.wait(later.id, 10).state is JobState.COMPLETED  # and it goes on
    finally:
        queue.stop()
    # what was rebuilt is in the new journal: the next start needs no kept request
    assert not list((out / ".inputs").glob("*.request.json"))
    again = JobQueue({"lotus": ScriptedPipeline()}, out)
    again.start()
    try:
        assert again.get(crashed["waiting"]).state is JobState.COMPLETED
        assert again.get(crashed["running"]).state is JobState.FAILED
    finally:
        again.stop()


def test_a_waiting_video_comes_back_from_a_damaged_journal_as_a_video(tmp_path):
    out = tmp_path / "out"
    video = tmp_path / "clip.mp4"
    video.write_bytes(make_video(frames=2))
    crashed = crash(out, jobs=1, video=video)
    damage_main_garbage(out)
    queue = JobQueue({"lotus": ScriptedPipeline()}, out)
    queue.start()
    try:
        view = queue.wait(crashed["waiting"], 10)
        assert view.state is JobState.COMPLETED, view.error
        assert view.result.path.read_text() == f"seed=100 size={(VIDEO_WIDTH, VIDEO_HEIGHT)}"
    finally:
        queue.stop()


def test_after_kill_9_the_waiting_job_runs_and_the_running_one_says_why(tmp_path):
    out = tmp_path / "out"
    _, waiting = crashed_server(out)
    pipeline = ScriptedPipeline()
    queue = JobQueue({"lotus": pipeline}, out)
    queue.start()
    try:
        assert queue.wait(waiting, 10).state is JobState.COMPLETED
        assert pipeline.started.get(timeout=1) == 100  # the waiting one, not the interrupted
        interrupted = [job for job in queue._index if job.state is JobState.FAILED]
        assert len(interrupted) == 1 and "interrupted" in interrupted[0].error
    finally:
        queue.stop()


def left_waiting(out, submit) -> str:
    """A server that stops while one job runs and the job `submit` makes waits: its id."""
    pipeline = ScriptedPipeline()
    first = JobQueue({"lotus": pipeline}, out)
    first.start()
    pipeline.actions[1] = "block"
    first.submit("lotus", (DepthRequest(image="x", seed=1), Image.new("RGB", (8, 8))))
    assert pipeline.started.get(timeout=10) == 1
    waiting = first.submit("lotus", submit).id
    stopping = threading.Thread(target=first.stop, args=(10,))
    stopping.start()
    wait_until(first._stopping.is_set)
    pipeline.release.set()  # the running job ends; the other waits for the next start
    stopping.join()
    return waiting


def after_restart(out, job_id, **settings):
    second = JobQueue({"lotus": ScriptedPipeline()}, out, **settings)
    second.start()
    try:
        return second.wait(job_id, 10)
    finally:
        second.stop()


def test_a_video_job_waiting_at_a_restart_runs_after_it(tmp_path):
    """A queued video is kept as its bytes, as a photo is, and probed again at the next
    start: it runs then, a video still (its frame size, not a decoded image's)."""
    video = DepthRequest(video=base64.b64encode(make_video(frames=2)).decode())
    waiting = left_waiting(tmp_path, lambda: video.load(load_settings().image_limits))
    view = after_restart(tmp_path, waiting)
    assert view.state is JobState.COMPLETED, view.error
    assert view.result.path.read_text() == f"seed=42 size={(VIDEO_WIDTH, VIDEO_HEIGHT)}"


def test_a_restored_video_handed_back_at_a_stop_runs_at_the_next_start(tmp_path):
    """Issue 31 item 5: a video job restored at a start, started, then handed back by a
    graceful stop (its model process stopped under it) is kept again as its bytes
    (journal.keep_input called .save on a Video: AttributeError) and runs at the next start."""
    video = DepthRequest(video=base64.b64encode(make_video(frames=2)).decode())
    waiting = left_waiting(tmp_path, lambda: video.load(load_settings().image_limits))
    pipeline = ScriptedPipeline()
    pipeline.actions[42] = "handed back"
    second = JobQueue({"lotus": pipeline}, tmp_path)
    second.start()
    assert pipeline.started.get(timeout=10) == 42
    stopping = threading.Thread(target=second.stop, args=(10,))
    stopping.start()
    wait_until(second._stopping.is_set)
    pipeline.release.set()
    stopping.join()
    assert second.get(waiting).state is JobState.QUEUED  # handed back, for the next start
    view = after_restart(tmp_path, waiting)
    assert view.state is JobState.COMPLETED, view.error
    assert view.result.path.read_text() == f"seed=42 size={(VIDEO_WIDTH, VIDEO_HEIGHT)}"


@pytest.mark.parametrize("damage, why", [
    ("over the new limit", "video has 2 frames; the limit is 1"),
    ("damaged", "not a supported video"),
])
def test_a_kept_input_that_cannot_be_reopened_fails_saying_why(tmp_path, damage, why):
    video = DepthRequest(video=base64.b64encode(make_video(frames=2)).decode())
    waiting = left_waiting(tmp_path, lambda: video.load(load_settings().image_limits))
    if damage == "damaged":
        kept = tmp_path / ".inputs" / waiting
        kept.write_bytes(kept.read_bytes()[:64])
    view = after_restart(tmp_path, waiting, video_limits=VideoLimits(max_frames=1))
    assert view.state is JobState.FAILED
    assert view.error.startswith("the server restarted before this job started and could "
                                 "not reopen its input (")
    assert why in view.error and view.error.endswith("); submit it again")


def test_a_damaged_journal_is_said_in_health(tmp_path, make_client, scripted):
    out = tmp_path / "outputs"
    crashed_server(out)
    damage_main_garbage(out)
    body = make_client({"lotus": scripted}, output_dir=out).get("/health").get_json()
    assert "moved aside" in body["notices"]["journal"]
    assert list(out.glob(f"{JOURNAL_NAME}.damaged-*"))  # kept for a person to look at


def test_a_row_the_server_cannot_read_answers_failed_with_the_reason(tmp_path, caplog):
    """Issue 31 item 6: not a 404 for a job the server accepted, and not fatal to the start."""
    out = tmp_path / "out"
    crashed = crash(out, jobs=4)
    finished = crashed["finished"]
    with sqlite3.connect(out / JOURNAL_NAME) as db:
        db.execute("UPDATE jobs SET state = 'archived' WHERE id = ?", (finished[0][0],))
        db.execute("UPDATE jobs SET options = '{not json' WHERE id = ?", (finished[1][0],))
        db.execute("UPDATE jobs SET result = '[1, 2' WHERE id = ?", (finished[2][0],))
        db.execute("UPDATE jobs SET options = '{not json' WHERE id = ?", (crashed["waiting"],))
    queue = JobQueue({"lotus": ScriptedPipeline()}, out)
    with caplog.at_level(logging.WARNING):
        queue.start()
    try:
        assert "unknown state 'archived'" in caplog.text
        assert queue.get(finished[3][0]).state is JobState.COMPLETED
        for job_id, why in ((finished[0][0], "unknown state 'archived'"),
                            (finished[1][0], "options are not valid JSON"),
                            (finished[2][0], "not valid JSON"),
                            (crashed["waiting"], "options are not valid JSON")):
            view = queue.get(job_id)
            assert view.state is JobState.FAILED, job_id
            assert view.error.startswith("this job's record in the job journal cannot be read")
            assert why in view.error and view.error.endswith("submit it again")
        for job_id, name in finished[:3]:  # not this release's to judge: kept as they are
            assert (out / name).exists()
        later = queue.submit("lotus", (DepthRequest(image="x"), Image.new("RGB", (8, 8))))
        assert queue.wait(later.id, 10).state is JobState.COMPLETED
    finally:
        queue.stop()
    with sqlite3.connect(out / JOURNAL_NAME) as db:  # the rows stay as they were written
        assert db.execute("SELECT state FROM jobs WHERE id = ?",
                          (finished[0][0],)).fetchone() == ("archived",)


def test_a_second_server_on_the_same_output_dir_refuses_to_start(tmp_path, monkeypatch):
    monkeypatch.setattr("jobs.storage.LOCK_WAIT_SECONDS", 0.2)
    first = JobQueue({"lotus": ScriptedPipeline()}, tmp_path / "out")
    first.start()
    try:
        second = JobQueue({"lotus": ScriptedPipeline()}, tmp_path / "out")
        with pytest.raises(OutputDirInUse, match="in use by another server"):
            second.start()
    finally:
        first.stop()
    again = JobQueue({"lotus": ScriptedPipeline()}, tmp_path / "out")
    again.start()  # the first one's lock went with it
    again.stop()


def test_expiry_runs_in_batches_and_keeps_the_newest_expired_ids(tmp_path, monkeypatch):
    monkeypatch.setattr(housekeeping, "EXPIRE_BATCH", 7)
    monkeypatch.setattr(housekeeping, "EXPIRED_IDS_KEPT", 20)
    queue = JobQueue({"lotus": ScriptedPipeline()}, tmp_path / "out", result_ttl_seconds=2,
                     janitor_interval=0.05, max_queue_size=100)
    queue.start()
    try:
        views = [queue.submit("lotus", (DepthRequest(image="x", seed=seed),
                                        Image.new("RGB", (8, 8)))) for seed in range(30)]
        views = [queue.wait(view.id, 10) for view in views]
        wait_until(lambda: not len(queue._index), timeout=10)
        wait_until(lambda: not any(view.result.path.exists() for view in views), timeout=10)
        for view in views[-20:]:
            with pytest.raises(JobExpired):
                queue.get(view.id)
        def rows():  # the last batch's rows are written just after its files go
            with sqlite3.connect(tmp_path / "out" / JOURNAL_NAME) as db:
                return db.execute("SELECT count(*) FROM jobs").fetchone()[0]

        wait_until(lambda: rows() == 20, timeout=10)
    finally:
        queue.stop()


def test_a_read_only_output_dir_is_named_as_such(tmp_path):
    """A volume remounted read-only (while the server has files open it cannot be, so the
    check is shown on a fresh read-only mount)."""
    with tmpfs(tmp_path / "ro", "ro,size=1m") as folder:
        assert storage_problem(folder, 0) == "OUTPUT_DIR is read-only or not writable"


def test_a_full_disk_at_start_is_not_taken_for_a_damaged_journal(tmp_path):
    with tmpfs(tmp_path / "small", "size=80m") as folder:
        crashed_server(folder, jobs=1)
        (folder / f"{JOURNAL_NAME}-shm").unlink()  # the next open must make it again
        with open(folder / "filler", "wb") as filler:
            try:
                while filler.write(b"\0" * 2**20):
                    filler.flush()
            except OSError:
                pass
        with pytest.raises(JournalWriteError, match="could not be opened"):
            Journal(folder)
        assert not list(folder.glob("*.damaged-*"))  # nothing moved aside
        (folder / "filler").unlink()
        journal = Journal(folder)
        assert journal.damaged is None and len(journal.records()[0]) == 3
        journal.close()


def test_a_lone_result_file_is_given_back_to_the_model_that_writes_it(tmp_path):
    """With no journal row, a result file's model and media type come from the model
    table's output formats: a video job's zip (an mp4 inside) is Lotus's, an OBJ zip SAM 3D's
    (the suffix alone once gave every zip to SAM 3D)."""
    import zipfile

    out = tmp_path / "out"
    out.mkdir()
    ids = {"lotus": "a" * 32, "sam3d": "b" * 32}
    for name, member in (("lotus", "depth.mp4"), ("sam3d", "model.obj")):
        with zipfile.ZipFile(out / f"{ids[name]}.zip", "w") as archive:
            archive.writestr(member, b"x")
    (out / f"{'c' * 32}.npy").write_bytes(b"x")
    queue = JobQueue({"lotus": ScriptedPipeline()}, out)
    queue.start()
    try:
        for name, job_id in ids.items():
            view = queue.get(job_id)
            assert (view.pipeline, view.state, view.result.media_type) == (
                name, JobState.COMPLETED, "application/zip")
        assert queue.get("c" * 32).pipeline == "lotus"
    finally:
        queue.stop()
