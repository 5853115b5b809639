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
    Bearer <key>'"): keep the header's name, never its value, and never the API key."""

    _HEADER = re.compile(r"(Invalid HTTP Header: ')([^\s:']*)[^']*(')")

    def filter(self, record: logging.LogRecord) -> bool:
        message = self._HEADER.sub(r"\1\2 [value not logged]\3", record.getMessage())
        if _settings.required_api_key:
            message = message.replace(_settings.required_api_key, "[redacted]")
        record.msg, record.args = message, ()
        return True


logging.getLogger("gunicorn.error").addFilter(NoSecrets())

# Set before the worker imports torch: fewer out-of-memory errors from fragmentation.
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

wsgi_app = "app:app"
bind = f"0.0.0.0:{_settings.port}"
workers = 1  # the queue and the models live in one process; more would duplicate both
worker_class = "gthread"
# Every waiting or running job may hold a /generate/sync thread; keep spares for polling,
# and 128 more for slow clients: gthread gives a connection a thread while its headers
# arrive, so a client dripping them a byte a second holds one. The models run in their own
# process, so threads here cost little. Past that, put a proxy with header timeouts in front.
SLOW_CLIENT_THREADS = 128
threads = _settings.max_queue_size + _settings.max_concurrent + 16 + SLOW_CLIENT_THREADS
timeout = int(_settings.sync_timeout_seconds) + 60
graceful_timeout = 30
keepalive = 5
accesslog = "-"
errorlog = "-"
loglevel = "info"
# Query strings never carry keys in this API, but keep them out of the log all the same.
access_log_format = '%(h)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(L)ss'


def worker_exit(server, worker):
    """SIGTERM (docker stop, a redeploy): gunicorn's worker stops serving at once, but the
    job the queue is running gets what is left of the graceful timeout to finish; waiting
    jobs stay in the journal and run at the next start."""
    application = getattr(sys.modules.get("app"), "__dict__", {}).get("app")
    if application is not None:
        application.extensions["queue"].stop(timeout=graceful_timeout - 5)
