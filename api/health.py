"""How the server is: `/health` (models, queue, workers, GPUs, and why each model of the
table does not take jobs here, `pipeline_reasons`), `/readyz` for a load balancer,
`/livez`, and `/metrics`."""

from __future__ import annotations

from dataclasses import dataclass

from flask import Flask, Response, current_app, jsonify

from metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from pipelines import PipelineRegistry, PipelineState
from pipelines.base import Capable, ModelTable, Noticing, public_message
from pipelines.device import gpu_info
from pipelines.table import SPECS
from schemas import Health, HealthStatus, ServerState
from settings import Settings
from workers.worker import WorkerState

from . import context
from .auth import holds_key

# A pipeline served only where another is: /segment's masks are of use to 3D jobs alone.
NEEDS = {name: spec.needs for name, spec in SPECS.items() if spec.needs}
# What /health shows only to the API key's holder: the ids of running jobs (on a server
# without API_KEY a job id is all that guards a result) and the model processes' pids.
OPEN_HEALTH_HIDES = {"workers": {"__all__": {"jobs", "pid"}}}


@dataclass(frozen=True)
class Reading:
    """One look at the server, each figure read once, for /health and /readyz."""

    pipelines: dict[str, PipelineState]
    workers: list[dict]
    stats: dict
    storage: str | None  # why results cannot be written now

    @classmethod
    def now(cls) -> "Reading":
        queue = context.queue()
        return cls(context.registry().status(), queue.workers(), queue.stats(),
                   queue.output_problem())


def problems_of(reading: Reading) -> dict[ServerState, list[str]]:
    """What stops this server from serving, by the `state` it puts /health in."""
    queue, pipelines = context.queue(), reading.pipelines
    unhealthy = []
    if queue.dispatchers_alive() < queue.dispatchers_expected():
        unhealthy.append("a queue dispatcher thread is dead")
    if not queue.janitor_alive():
        unhealthy.append("the queue's janitor is dead")
    if reading.storage is not None:
        unhealthy.append(reading.storage)
    setup_failed = [f"model {name!r} failed to load" for name, state in pipelines.items()
                    if state is PipelineState.FAILED] or (
                        [] if pipelines else ["no model to serve"])
    starting = [f"model {name!r} is loading" for name, state in pipelines.items()
                if state is PipelineState.LOADING]
    for name in [name for name, state in pipelines.items() if state is PipelineState.READY]:
        own = [worker for worker in reading.workers if worker["pipeline"] == name]
        if own and not any(WorkerState(worker["state"]).up for worker in own):
            starting.append(f"model {name!r} has no worker up: "
                            f"{own[0]['reason'] or own[0]['state']}")
    return {ServerState.UNHEALTHY: unhealthy, ServerState.SETUP_FAILED: setup_failed,
            ServerState.STARTING: starting}


def state_of(problems: dict[ServerState, list[str]], stats: dict) -> ServerState:
    """Cog's states, plus unhealthy: the first kind of problem found, else ready or busy."""
    for state in (ServerState.UNHEALTHY, ServerState.SETUP_FAILED, ServerState.STARTING):
        if problems[state]:
            return state
    return ServerState.BUSY if stats["processing"] or stats["queued"] else ServerState.READY


def health_answer() -> Response:
    """/health, built and serialised anew only when one of its readings changed: a load
    balancer polling it costs a few reads, not a model validated and dumped each time.
    The open view (anyone, and everyone on a server without API_KEY) lists no job ids and
    no process ids (issue 31 item 13): a job id is what guards a result and a forced cancel."""
    reading, queue = Reading.now(), context.queue()
    view = "full" if holds_key() else "open"
    key = repr((reading, queue.dispatchers_alive(), queue.janitor_alive(), queue.journal_notice))
    answers = current_app.extensions.setdefault("health", {})
    cached = answers.get(view)
    if cached is None or cached[0] != key:
        body, status = health_body(reading)
        cached = answers[view] = (key, body.model_dump_json(
            exclude=OPEN_HEALTH_HIDES if view == "open" else None), status)
    return Response(cached[1], cached[2], mimetype="application/json")


def health_body(reading: Reading) -> tuple[Health, int]:
    """Everything else in /health (models, capabilities, notices, GPUs) is fixed once the
    pipelines have loaded, which `reading.pipelines` tells."""
    registry, queue = context.registry(), context.queue()
    pipelines = reading.pipelines
    state = state_of(problems_of(reading), reading.stats)
    ready = bool(pipelines) and all(s is PipelineState.READY for s in pipelines.values()) \
        and state in (ServerState.READY, ServerState.BUSY)
    broken = state in (ServerState.UNHEALTHY, ServerState.SETUP_FAILED)
    status = (HealthStatus.UNHEALTHY if broken else HealthStatus.HEALTHY if ready
              else HealthStatus.LOADING)
    capabilities = {name: pipeline.capabilities for name, pipeline in registry.items()
                    if isinstance(pipeline, Capable)}
    for name, needed in NEEDS.items():  # e.g. segment.offered: /segment answers now
        capabilities[name] = {"offered": all(pipelines.get(each) is PipelineState.READY
                                             for each in (name, needed))}
    notices = {name: pipeline.notice for name, pipeline in registry.items()
               if isinstance(pipeline, Noticing) and pipeline.notice}
    models = {name: info for pipeline in registry.values() if isinstance(pipeline, ModelTable)
              for name, info in pipeline.model_table().items()}
    if queue.journal_notice:
        notices["journal"] = queue.journal_notice
    if reading.storage is not None:
        notices["storage"] = reading.storage
    body = Health(status=status, state=state, model_loaded=ready, **gpus(),
                  queue=reading.stats, pipelines=pipelines,
                  pipeline_reasons=pipeline_reasons(context.settings(), registry),
                  capabilities=capabilities,
                  models=models, workers_alive=queue.dispatchers_alive(),
                  workers=[{**worker, "running": len(worker["jobs"])}
                           for worker in reading.workers],
                  notices=notices)
    return body, 503 if broken else 200


def gpus() -> dict:
    """The GPUs the model workers run on, as the probe found them (this process never
    initialises CUDA); in-process pipelines (MODEL_PROCESS=0) ask torch here."""
    devices = current_app.extensions["devices"]
    if not devices:
        return gpu_info()
    gpus = [{"name": d.name, "vram_gb": d.memory_gib or 0.0} for d in devices
            if d.kind == "cuda"]
    return {"cuda": bool(gpus), "gpu": gpus[0] if gpus else None, "gpus": gpus}


def pipeline_reasons(settings: Settings, registry: PipelineRegistry) -> dict[str, str]:
    """Why each pipeline of the model table does not take jobs here now, and what to do: the
    words /health (`pipeline_reasons`), the API's refusal, the page's tooltip and the CLI
    give. A ready one is not listed. Open (in /health): names settings, never a path."""
    status, reasons = registry.status(), {}
    for name in SPECS:
        state = status.get(name)
        if state is PipelineState.LOADING:
            reasons[name] = "loading: jobs wait until it is ready"
        elif state is PipelineState.FAILED:
            reasons[name] = (f"failed to load: {public_message(registry.error(name) or '?')}; "
                             "the server's log says more, DEPLOY.md what it needs")
        elif state is None:
            reasons[name] = f"not served here: {_not_served(name, settings)}"
    return reasons


def _not_served(name: str, settings: Settings) -> str:
    spec = SPECS[name]
    if spec.needs is not None:
        return f"it serves {spec.needs}'s jobs, and runs only where {spec.needs} does"
    if settings.pipeline_names and name not in settings.pipeline_names:
        return f"PIPELINES={','.join(settings.pipeline_names)} leaves it out"
    return spec.unconfigured


def add_routes(app: Flask) -> None:
    @app.get("/health")
    def health():
        return health_answer()

    @app.get("/livez")
    def livez():
        return jsonify(alive=True)

    @app.get("/readyz")
    def readyz():
        reading = Reading.now()
        problems = problems_of(reading)
        state = state_of(problems, reading.stats)
        reasons = [reason for kind in problems.values() for reason in kind]
        return jsonify(ready=not reasons, state=state, reasons=reasons), 503 if reasons else 200

    @app.get("/metrics")
    def metrics():
        return Response(current_app.extensions["metrics"].exposition(),
                        mimetype=METRICS_CONTENT_TYPE)
