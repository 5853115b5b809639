"""What every request handler reads: this app's settings, queue and registry, kept in
`current_app.extensions` by `app.create_app`."""

from __future__ import annotations

from flask import current_app

from pipelines import PipelineRegistry
from queue_manager import JobQueue
from settings import Settings


def settings() -> Settings:
    return current_app.extensions["settings"]


def queue() -> JobQueue:
    return current_app.extensions["queue"]


def registry() -> PipelineRegistry:
    return current_app.extensions["registry"]
