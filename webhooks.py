"""Webhooks: a job's status POSTed to the client's URL when it finishes (and, when asked, when
it starts), signed the Standard Webhooks way and retried with backoff.

Signing is the `standardwebhooks` library's: `webhook-id`, `webhook-timestamp` and
`webhook-signature` (`v1,` + base64 HMAC-SHA256 over `id.timestamp.body`) with
WEBHOOK_SECRET (`whsec_` + base64), so receivers verify with any Standard Webhooks library.
The address rules are `image_url`'s (pipelines/fetch.py): checked at submission and again
at every delivery, since DNS can change in between. Each try runs on a timer thread of its
own; the queue's observer hook only schedules the first.
"""

from __future__ import annotations

import json
import logging
import threading
from datetime import datetime, timezone
from typing import Callable
from urllib.parse import urlsplit

from standardwebhooks.webhooks import Webhook

from api.views import describe
from pipelines.errors import InvalidInput
from pipelines.fetch import post_checked
from queue_manager import JobState, JobView

log = logging.getLogger(__name__)

EVENTS = ("start", "completed", "failed", "cancelled")
DEFAULT_EVENTS = ("completed", "failed", "cancelled")
# seconds before each retry: six tries over about 13 minutes
RETRY_DELAYS = (5, 15, 60, 180, 540)
TIMEOUT_SECONDS = 10.0


class WebhookSender:
    def __init__(self, secret: str, *, allow_private: bool = False, delays: tuple[float, ...] | None = None,
                 post: Callable[..., int] = post_checked):
        self._signer = Webhook(secret)
        self._allow_private = allow_private
        self._delays, self._post = delays, post

    def observe(self, view: JobView) -> None:
        """The queue's observer: hand a delivery over when the job hit an asked-for event."""
        url = getattr(view.options, "webhook", None)
        if not url:
            return
        if view.state is JobState.PROCESSING and view.stage == "starting":
            event = "start"
        elif view.state.finished:
            event = view.state.value
        else:
            return
        if event not in (getattr(view.options, "webhook_events", None) or DEFAULT_EVENTS):
            return
        body = json.dumps({"type": f"job.{event}",
                           "timestamp": datetime.now(timezone.utc).isoformat(),
                           "data": describe(view)})
        # one id per event, the same for its retries: receivers drop duplicates by it
        self._schedule(0, url, f"msg_{view.id}_{event}", body, 1)

    def _schedule(self, delay: float, *attempt) -> None:
        """Each try on a daemon timer thread of its own: a slow or dead receiver holds up
        nothing else, and a stopping server does not wait for pending retries (they are
        lost with the process: webhooks are at least once while the server runs)."""
        timer = threading.Timer(delay, self._attempt, attempt)
        timer.daemon = True
        timer.start()

    def _attempt(self, url: str, message_id: str, body: str, attempt: int) -> None:
        host = urlsplit(url).hostname  # logged instead of the URL, which may carry a token
        now = datetime.now(timezone.utc)
        headers = {"Content-Type": "application/json", "webhook-id": message_id,
                   "webhook-timestamp": str(int(now.timestamp())),
                   "webhook-signature": self._signer.sign(message_id, now, body)}
        try:
            status = self._post(url, body.encode(), headers, what="webhook",
                                timeout=TIMEOUT_SECONDS, allow_private=self._allow_private)
        except InvalidInput as exc:  # unreachable, refused address, timeout
            status, reason = None, str(exc)
        else:
            reason = f"HTTP {status}"
        delays = self._delays or RETRY_DELAYS
        if status is not None and 200 <= status < 300:
            log.info("webhook %s delivered to %s (attempt %d)", message_id, host, attempt)
        elif attempt <= len(delays):
            log.warning("webhook %s to %s: attempt %d failed (%s); retrying in %g s",
                        message_id, host, attempt, reason, delays[attempt - 1])
            self._schedule(delays[attempt - 1], url, message_id, body, attempt + 1)
        else:
            log.error("webhook %s to %s: gave up after %d attempts (%s)", message_id, host,
                      attempt, reason)
