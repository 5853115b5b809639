"""A job's status JSON: the one `GET /job/<id>` answers, its event stream
(front/events.py) sends and its webhooks (webhooks.py) POST. Neither Flask nor the queue:
the queue's observers and the event stream read it here, never from the HTTP layer."""

from __future__ import annotations

from jobs.state import JobState, JobView
from pipelines.base import public_message
from schemas import JobStatus


def describe(view: JobView) -> dict:
    """A job's status as `GET /job/<id>` answers it, for its events stream and webhooks."""
    return job_status(view).model_dump(exclude_none=True)


def job_status(view: JobView) -> JobStatus:
    fields: dict = {}
    if view.state is JobState.QUEUED:
        fields.update(queue_length=view.queue_length,
                      message=f"Waiting in queue, position {view.position}")
    elif view.state is JobState.PROCESSING:
        fields.update(processing_time=view.processing_time, worker=view.worker,
                      batch_size=view.batch_size, message=(
            "Cancelling: the job stops at its next stage" if view.cancel_requested
            else f"Processing: {view.stage}"))
    elif view.state is JobState.COMPLETED:
        fields.update(download_url=f"/job/{view.id}/download", worker=view.worker,
                      batch_size=view.batch_size, processing_time=view.processing_time,
                      **view.result.info)
    elif view.state is JobState.FAILED:
        fields.update(error=public_message(view.error),
                      processing_time=view.processing_time)
    else:
        fields.update(message="Job was cancelled")
    return JobStatus(job_id=view.id, status=view.state.value, position=view.position,
                     stage=view.stage, progress=view.progress, **fields)
