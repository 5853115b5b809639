"""The HTTP front: asyncio connections under gunicorn, each request's budget, the bridge to
the Flask app, server-sent events and the headers every answer carries."""
