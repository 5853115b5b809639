"""gunicorn settings: one worker process owns the GPU models and the queue; threads serve HTTP.

Models load in that worker after the fork (`app:app` is built lazily there), so the
master never touches CUDA. Settings are validated here first, so a bad environment
variable stops the server with one line instead of a worker boot loop.
"""

import logging
import os
import re
import sys

from settings import SettingsError, load_settings

try:
    _settings = load_settings()
except SettingsError as exc:
    sys.exit(f"error: {exc}")

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


class NoSecrets(logging.Filter):
    """gunicorn logs a malformed header line whole ("Invalid HTTP Header: 'Authorization
    Bearer <key>'"): keep the header's name, never its value, and never the API key (in
    gunicorn's log and uvicorn's, which the worker writes to)."""

    _HEADER = re.compile(r"(Invalid HTTP Header: ')([^\s:']*)[^']*(')")

    def filter(self, record: logging.LogRecord) -> bool:
        message = self._HEADER.sub(r"\1\2 [value not logged]\3", record.getMessage())
        if _settings.required_api_key:
            message = message.replace(_settings.required_api_key, "[redacted]")
        record.msg, record.args = message, ()
        return True


for _logger in ("gunicorn.error", "uvicorn.error"):
    logging.getLogger(_logger).addFilter(NoSecrets())

# Set before the worker imports torch: fewer out-of-memory errors from fragmentation.
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

wsgi_app = "app:app"
# HOST (settings.py): 127.0.0.1 unless told otherwise; gunicorn logs "Listening at: ...".
bind = _settings.bind
workers = 1  # the queue and the models live in one process; more would duplicate both
# uvicorn's asyncio server in front of the Flask app (front/worker.py, front/asgi.py):
# a connection costs a coroutine, not a thread, until its request is complete, and event
# streams, slow headers and slow bodies each have their own budget (front/budgets.py).
worker_class = "front.worker.FrontWorker"
# The Flask app's threads: every waiting or running job may hold a /generate/sync one, and
# 16 spares answer /health, status polls and submissions. The models run in their own
# process, so threads here cost little.
threads = _settings.max_queue_size + _settings.max_concurrent + 16
timeout = int(_settings.sync_timeout_seconds) + 60
graceful_timeout = 30
keepalive = 5
accesslog = "-"
errorlog = "-"
loglevel = "info"


def when_ready(server):
    """Ctrl-C in a terminal (SIGINT to the whole process group) stops the server as SIGTERM
    does: gunicorn's master answers SIGINT with a quick stop (SIGQUIT to the worker,
    gunicorn 23.0.0 gunicorn/arbiter.py:258-261 handle_int) where SIGTERM is graceful
    (:254-256 handle_term); the arbiter looks its handlers up by name on each signal
    (arbiter.py:218, getattr(self, "handle_%s" % signame)). The model processes ignore SIGINT (workers/model_process.py)."""
    server.handle_int = server.handle_term


def worker_exit(server, worker):
    """SIGTERM (docker stop, a redeploy): gunicorn's worker stops serving at once, but the
    job the queue is running gets what is left of the graceful timeout to finish; waiting
    jobs stay in the journal and run at the next start."""
    application = getattr(sys.modules.get("app"), "__dict__", {}).get("app")
    if application is not None:
        application.extensions["queue"].stop(timeout=graceful_timeout - 5)
