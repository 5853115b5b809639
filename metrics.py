"""Prometheus metrics (prometheus_client), one registry per app, served at GET /metrics.

Jobs are observed through the queue's observer hook (every submission, state and stage
change), HTTP requests through Flask's after_request, and the queue's and registry's
current state is read at scrape time, so nothing here can drift from what /health says.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from queue_manager import JobState, JobView

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# seconds: a depth map on a GPU takes well under one, a textured GLB minutes
JOB_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
GIB = 2**30
# Any other method (anyone can send "BREW /") is counted as "other": a label value per
# made-up method would let unauthenticated requests grow /metrics without bound.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.jobs = Counter("sam3d_jobs_total", "Jobs by pipeline, output and final state",
                            ["pipeline", "output", "state"], registry=self.registry)
        self.job_seconds = Histogram(
            "sam3d_job_duration_seconds", "Processing time of completed jobs",
            ["pipeline", "output"], buckets=JOB_BUCKETS, registry=self.registry)
        self.stage_seconds = Histogram(
            "sam3d_stage_duration_seconds", "Time spent in each stage of a job",
            ["pipeline", "stage"], buckets=JOB_BUCKETS, registry=self.registry)
        self.wait_seconds = Histogram(
            "sam3d_queue_wait_seconds", "Time from submission to start", ["pipeline"],
            buckets=JOB_BUCKETS, registry=self.registry)
        self.gpu_peak = Histogram(
            "sam3d_job_gpu_peak_bytes", "Peak GPU memory allocated by a job (GPU only)",
            ["pipeline", "output"], buckets=[gib * GIB for gib in (1, 2, 4, 8, 12, 16, 24, 32,
                                                                   48, 80)],
            registry=self.registry)
        self.requests = Counter("sam3d_http_requests_total", "HTTP requests by route and status",
                                ["method", "route", "status"], registry=self.registry)
        self._request_counters: dict[tuple[str, str, int], Callable[[], None]] = {}
        self._stages: dict[str, tuple[str, float]] = {}  # job id -> (stage, since)
        self._lock = threading.Lock()

    def watch(self, stats: Callable[[], dict[str, int]],
              load_seconds: Callable[[], dict[str, float]]) -> None:
        """Gauges read at scrape time: the queue's counts and each model's load time."""
        self.registry.register(_Current(stats, load_seconds))

    def observe(self, view: JobView) -> None:
        """The queue's observer: a job was submitted, moved or changed stage."""
        now = time.monotonic()
        with self._lock:
            previous = self._stages.pop(view.id, None)
            if previous is not None and previous[0] not in ("queued", "starting"):
                self.stage_seconds.labels(view.pipeline, previous[0]).observe(now - previous[1])
            if not view.state.finished:
                self._stages[view.id] = (view.stage, now)
        if view.state is JobState.PROCESSING and view.stage == "starting" and view.waited is not None:
            self.wait_seconds.labels(view.pipeline).observe(view.waited)
        if view.state.finished:
            self.jobs.labels(view.pipeline, view.output, view.state.value).inc()
        if view.state is JobState.COMPLETED:
            self.job_seconds.labels(view.pipeline, view.output).observe(view.processing_time or 0)
            peak = (view.result.info or {}).get("gpu_peak_bytes") if view.result else None
            if peak:
                self.gpu_peak.labels(view.pipeline, view.output).observe(peak)

    def request(self, method: str, route: str, status: int) -> None:
        """One request counted; each label set's counter is looked up once (`labels` checks
        and locks on every call, a cost beside a status poll's own)."""
        key = (method if method in METHODS else "other", route, status)
        if (count := self._request_counters.get(key)) is None:
            count = self._request_counters.setdefault(
                key, self.requests.labels(key[0], route, str(status)).inc)
        count()

    def gauge(self, name: str, description: str, read: Callable[[], float]) -> None:
        """A gauge whose value `read` gives at scrape time (the HTTP front's open streams)."""
        self.registry.register(_Read(name, description, read))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _Current:
    """A collector of values that exist elsewhere: read, never copied."""

    def __init__(self, stats, load_seconds):
        self._stats, self._load_seconds = stats, load_seconds

    def collect(self):
        stats = self._stats()
        yield GaugeMetricFamily("sam3d_queue_waiting_jobs", "Jobs waiting in the queue",
                                value=stats["queued"])
        yield GaugeMetricFamily("sam3d_queue_running_jobs", "Jobs being processed",
                                value=stats["processing"])
        loads = GaugeMetricFamily("sam3d_model_load_seconds", "Time each model took to load",
                                  labels=["pipeline"])
        for name, seconds in self._load_seconds().items():
            loads.add_metric([name], seconds)
        yield loads


class _Read:
    def __init__(self, name, description, read):
        self._name, self._description, self._read = name, description, read

    def collect(self):
        yield GaugeMetricFamily(self._name, self._description, value=self._read())
