"""The HTTP API, one module per concern; `app.py` builds the Flask app from them.

- `context`: this app's settings, queue and registry (Flask's `current_app.extensions`)
- `errors`: the one error body, the one `Retry-After`, and the app's error handlers
  (the ASGI front, front/asgi.py, answers its own refusals with the same body)
- `auth`: the API key (constant-time) and the paths open without it
- `request_body`: a request's JSON body or multipart form as the endpoint's model
- `submission`: a validated request -> a queued job (readiness, webhook, Idempotency-Key)
- `endpoints`: `POST /<path>` and `/<path>/sync`, one loop over the model table
- `jobs`: `/job/<id>` and its cancel, events and download; waiting for a finished job
- `views`: a job's status JSON, the one `GET /job/<id>`, webhooks and event streams send
- `health`: `/health` (with `pipeline_reasons`), `/livez`, `/readyz`, `/metrics`
- `page`: the web page, its static files and its vendored JavaScript

This package imports nothing at its top so that `api.views` and `api.errors` are cheap to
import for webhooks.py, front/events.py and front/asgi.py.
"""
