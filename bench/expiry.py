#!/usr/bin/env python3
"""Status reads while results expire beside 100k kept expired ids: this server's sweep (a
heap, batches of EXPIRE_BATCH, files and rows outside the queue's lock, on the state index)
beside the sweep it replaced (every job scanned under the lock, one unindexed DELETE per job), on the
same journal in the same run; and the restart time with that journal.

    python bench/expiry.py [--expired 100000] [--stale 200]

The target: a status read stays under 10 ms while the sweep runs.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for folder in (ROOT, ROOT / "tests"):
    sys.path.insert(0, str(folder))

from PIL import Image  # noqa: E402

from jobs import housekeeping  # noqa: E402
from jobs.journal import JOURNAL_NAME  # noqa: E402
from pipelines.lotus import DepthRequest  # noqa: E402
from queue_manager import JobQueue, JobState  # noqa: E402
from stand_ins import ScriptedPipeline  # noqa: E402

TTL = 3.0


def journal_with(folder: Path, expired: int, stale: int) -> None:
    """`expired` ids already expired (the most the server keeps) and `stale` completed jobs,
    finished now (stale TTL seconds from now), written straight into a journal made by a
    queue (so the table and index are the server's own)."""
    queue = JobQueue({"lotus": ScriptedPipeline()}, folder)
    queue.start()
    queue.stop()
    options = DepthRequest(image="x").without_image().model_dump_json()
    now = time.time()
    rows = [(f"{index:032x}", "expired", now - 10 * TTL + index * 1e-6)
            for index in range(expired)]
    rows += [(f"{expired + index:032x}", "completed", now + index * 1e-6)
             for index in range(stale)]
    with sqlite3.connect(folder / JOURNAL_NAME) as db:
        db.executemany("INSERT INTO jobs VALUES (?, 'lotus', 'pipelines.lotus:DepthRequest', ?,"
                       " ?, ?, ?, ?, NULL, NULL, NULL, NULL)",
                       ((job_id, options, state, at, at, at) for job_id, state, at in rows))


class Holding(ScriptedPipeline):
    """A job that runs until the bench is done, however long the old sweep takes."""

    def __init__(self):
        super().__init__()
        self.done = threading.Event()

    def run(self, options, image, output_stem, progress):
        self.done.wait()
        return super().run(options, image, output_stem, progress)


def old_sweep(queue: JobQueue, journal) -> None:
    """What the janitor did before: under the lock, every job checked, each stale one expired
    with the unindexed DELETE ... NOT IN that kept the newest expired ids."""
    index = queue._index
    with queue._lock:
        for job in [job for job in index if index.is_stale(job)]:
            index._jobs.pop(job.id, None)
            index._expired[job.id] = None
            with journal._lock:
                journal._db.execute("UPDATE jobs SET state = 'expired', result = NULL "
                                    "WHERE id = ?", (job.id,))
                journal._db.execute("""DELETE FROM jobs WHERE state = 'expired' AND id NOT IN (
                    SELECT id FROM jobs WHERE state = 'expired' ORDER BY finished_at DESC
                    LIMIT ?)""", (housekeeping.EXPIRED_IDS_KEPT,))


def measure(expired: int, stale: int, sweep_name: str) -> dict:
    with tempfile.TemporaryDirectory() as work:
        folder = Path(work) / "out"
        journal_with(folder, expired, stale)
        pipeline = Holding()  # the job being polled runs all along
        started = time.perf_counter()
        queue = JobQueue({"lotus": pipeline}, folder, result_ttl_seconds=TTL,
                         janitor_interval=3600)  # the bench runs the sweep itself
        queue.start()
        restart = time.perf_counter() - started
        live = queue.submit("lotus", (DepthRequest(image="x", seed=7), Image.new("RGB", (8, 8))))
        time.sleep(max(0.0, TTL + 0.2 - restart))
        sweep = (lambda: old_sweep(queue, queue._journal)) if sweep_name == "old" else (
            lambda: housekeeping.expire_due(queue, queue._journal))
        done, reads = threading.Event(), []
        thread = threading.Thread(target=lambda: (sweep(), done.set()))
        sweep_started = time.perf_counter()
        thread.start()
        while not done.is_set():
            read = time.perf_counter()
            assert queue.get(live.id).state is JobState.PROCESSING
            reads.append(time.perf_counter() - read)
            time.sleep(0.001)
        thread.join()
        sweep_seconds = time.perf_counter() - sweep_started
        pipeline.done.set()
        queue.stop()
    reads.sort()
    return {"restart_s": restart, "sweep_s": sweep_seconds, "reads": len(reads),
            "p50_ms": statistics.median(reads) * 1e3 if reads else 0.0,
            "max_ms": reads[-1] * 1e3 if reads else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--expired", type=int, default=housekeeping.EXPIRED_IDS_KEPT)
    parser.add_argument("--stale", type=int, default=200)
    args = parser.parse_args()
    print(f"{args.stale} results expiring beside {args.expired} kept expired ids; status "
          "reads of another job meanwhile")
    print(f"{'sweep':<28}{'sweep s':>10}{'reads':>8}{'p50 ms':>12}{'max ms':>12}")
    for name, label in (("old", "before (scan under lock)"), ("new", "now (heap, batches)")):
        figures = measure(args.expired, args.stale, name)
        print(f"{label:<28}{figures['sweep_s']:>10.2f}{figures['reads']:>8}"
              f"{figures['p50_ms']:>12.3f}{figures['max_ms']:>12.1f}")
    print(f"restart with that journal: {figures['restart_s']:.2f} s; target: max under 10 ms")


if __name__ == "__main__":
    main()
