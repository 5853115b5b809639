"""The RunPod answer's files: each result moved to OUTPUT_DIR (a network volume every
worker shares) as `<RunPod's job id><suffix>`, and sent inline as base64 while it fits in
what is left of RunPod's payload limits, else by path (and a URL when a bucket is set); and
the sweep of that volume. Line numbers are runpod-python 1.7.7's, the pinned SDK.
"""

from __future__ import annotations

import base64
import logging
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from pipelines.base import Result

log = logging.getLogger("handler")

BUCKET_SETTINGS = ("BUCKET_ENDPOINT_URL", "BUCKET_ACCESS_KEY_ID", "BUCKET_SECRET_ACCESS_KEY",
                   "BUCKET_NAME")


def answer(results: list[tuple[str, Result]], job_id: str, batch: bool, key: str, *,
           output_dir: Path, inline_bytes: int, bucket: str | None) -> dict:
    """The plan's answer for a job's results (each with its queue job's id): one, or
    `{"results": [...]}` for a job's `images`, `key` holding each file's base64 while the
    job's inline budget lasts."""
    answers, inline_left = [], inline_bytes
    for index, done in enumerate(results):
        name = f"{job_id}-{index}" if batch else job_id
        answers.append(_one(name, done, key, inline_left, output_dir, bucket))
        inline_left -= len(answers[-1].get(key, ""))
    return {"results": answers} if batch else answers[0]


def _one(name: str, done: tuple[str, Result], key: str, inline_left: int, output_dir: Path,
         bucket: str | None) -> dict:
    """base64 + min/max + file_path, or a path (and a URL) when the file would not fit in
    what is left of RunPod's payload limits for this job. The queue's result file becomes
    OUTPUT_DIR/<name><its suffix>."""
    queue_id, result = done
    output_dir.mkdir(parents=True, exist_ok=True)
    target = output_dir / (name + Path(result.path).name[len(queue_id):])
    shutil.move(result.path, target)
    result = replace(result, path=target)
    found: dict[str, Any] = {**result.info, "file_path": str(result.path),
                             "media_type": result.media_type}
    size = Path(result.path).stat().st_size
    if size * 4 / 3 <= inline_left:
        found[key] = base64.b64encode(Path(result.path).read_bytes()).decode()
        return found
    found["message"] = (f"result is {size} bytes, over the inline limit; "
                        "read it from file_path (network volume) or url")
    if bucket:
        from runpod.serverless.utils.rp_upload import upload_file_to_bucket

        found["url"] = upload_file_to_bucket(f"{name}{Path(result.path).suffix}",
                                             str(result.path), bucket_name=bucket)
    return found


def bucket_name() -> str | None:
    """The bucket large results go to, when every BUCKET_* setting is there; else None, and
    the start-up log says which are missing. Without a name, the SDK would upload to a
    bucket named after the month (rp_upload.py:228-229)."""
    missing = [name for name in BUCKET_SETTINGS if not os.environ.get(name, "").strip()]
    if not missing:
        log.info("results over the inline limit are uploaded to bucket %s",
                 os.environ["BUCKET_NAME"].strip())
        return os.environ["BUCKET_NAME"].strip()
    if len(missing) < len(BUCKET_SETTINGS):
        log.warning("bucket upload is off: %s not set; results over the inline limit are "
                    "answered by path on the volume", ", ".join(missing))
    return None


def sweep_volume(folder: Path, ttl_seconds: float) -> None:
    """Answer files in OUTPUT_DIR older than RESULT_TTL_SECONDS go. The queue expires its
    own jobs (jobs/housekeeping.expire_due); OUTPUT_DIR is a network volume that
    outlives every worker, so the files a stopped worker answered with are no queue's,
    and any worker removes them."""
    deadline = time.time() - ttl_seconds
    for path in folder.iterdir() if folder.is_dir() else ():
        try:
            if path.is_file() and path.stat().st_mtime < deadline:
                path.unlink()
        except OSError as exc:  # another worker removed it first, or a permission
            log.debug("could not expire %s: %s", path.name, exc)
