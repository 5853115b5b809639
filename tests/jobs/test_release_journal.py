"""An upgrade keeps every job: a journal written by the release before the redesign (commit
62efd9a, by tests/fixtures/make_release_journal.py, killed with SIGKILL) restores under
today's code. Its rows name that release's classes (`pipelines.lotus:DepthRequest`,
`pipelines.sam3d:GenerateRequest`)."""

import json
import shutil
from pathlib import Path

from conftest import wait_until
from pipelines.sam3d import GenerateRequest
from stand_ins import ScriptedPipeline

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "release_62efd9a"


class Scripted3D(ScriptedPipeline):
    name = "sam3d"
    options_model = GenerateRequest


def test_a_journal_of_the_last_release_restores_and_its_jobs_complete(tmp_path, make_client,
                                                                      monkeypatch):
    # the release wrote it with OUTPUT_DIR=outputs (the default), relative to its folder
    monkeypatch.chdir(tmp_path)
    out = Path("outputs")
    shutil.copytree(FIXTURE, out)
    ids = json.loads((out / "ids.json").read_text())
    lotus = ScriptedPipeline()
    # the fixture's jobs finished when it was made: kept past any age for this test
    client = make_client({"lotus": lotus, "sam3d": Scripted3D()}, output_dir=out,
                         result_ttl_seconds=10**9)

    for key, text in (("depth", b"seed=1 size=(8, 6)"), ("normal", b"seed=2 size=(8, 6)"),
                      ("3d", b"seed=3 size=(8, 6)")):
        status = client.get(f"/job/{ids[key]}").get_json()
        assert status["status"] == "completed", (key, status)
        download = client.get(f"/job/{ids[key]}/download")
        assert download.status_code == 200 and download.data == text, key

    running = client.get(f"/job/{ids['running']}").get_json()
    assert running["status"] == "failed" and "interrupted" in running["error"]

    wait_until(lambda: client.get(f"/job/{ids['waiting']}").get_json()["status"] == "completed",
               timeout=20)
    assert client.get(f"/job/{ids['waiting']}/download").data == b"seed=5 size=(8, 6)"
    assert 5 in list(lotus.started.queue)  # it ran here, with the options the old rows hold


def test_a_failed_job_of_the_last_release_answers_with_the_status_it_failed_with(
        tmp_path, make_client, monkeypatch):
    """That release wrote a failed job's HTTP status in the journal (`error_status`); today
    a job keeps the kind of its failure and the HTTP layer picks the status
    (pipelines/errors.py). The old rows' statuses read as their kinds, so after the upgrade
    the download of a job that failed 422 (a relief with no surface) still answers 422, and
    one that ran out of GPU memory 507; the journal takes new rows afterwards."""
    import sqlite3
    import time

    monkeypatch.chdir(tmp_path)
    out = Path("outputs")
    shutil.copytree(FIXTURE, out)
    old = sqlite3.connect(out / ".jobs.sqlite3")
    assert len(old.execute("PRAGMA table_info(jobs)").fetchall()) == 11  # that release's
    failed = {"a" * 32: (422, "no surface to mesh"), "b" * 32: (507, "Out of GPU memory."),
              "c" * 32: (500, "RuntimeError: boom")}
    for job_id, (status, error) in failed.items():
        old.execute("INSERT INTO jobs VALUES (?, 'lotus', 'pipelines.lotus:DepthRequest', "
                    "'{\"output\": \"relief\"}', 'failed', ?, ?, ?, NULL, ?, ?)",
                    (job_id, time.time() - 5, time.time() - 4, time.time() - 3, error, status))
    old.commit()
    old.close()
    client = make_client({"lotus": ScriptedPipeline(), "sam3d": Scripted3D()}, output_dir=out,
                         result_ttl_seconds=10**9)

    for job_id, (status, error) in failed.items():
        answer = client.get(f"/job/{job_id}/download")
        assert (answer.status_code, answer.get_json()["error"]) == (status, error)
        assert client.get(f"/job/{job_id}").get_json()["status"] == "failed"
    ids = json.loads((out / "ids.json").read_text())
    wait_until(lambda: client.get(f"/job/{ids['waiting']}").get_json()["status"] == "completed",
               timeout=20)  # the migrated journal records today's rows
