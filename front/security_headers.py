"""Headers every answer carries, the web page's and the API's alike (the HTTP front adds
them, front/asgi.py).

The page loads its scripts from /vendor and /static on this origin, and one inline
import map, allowed by its hash (read from the page, so editing it cannot drift from the
policy). The splat viewer runs its sorter as WebAssembly in a worker made from a blob: URL;
results are shown and downloaded through blob: URLs, a chosen video and a video job's mp4
played from them too.
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

PAGE = Path(__file__).resolve().parent.parent / "web" / "static" / "index.html"
_IMPORT_MAP = re.compile(r'<script type="importmap">(.*?)</script>', re.DOTALL)


def _inline_script_hashes(page: Path) -> str:
    return " ".join(
        "'sha256-%s'" % base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
        for script in _IMPORT_MAP.findall(page.read_text() if page.is_file() else ""))


def security_headers(page: Path) -> dict[str, str]:
    policy = "; ".join([
        "default-src 'self'",
        f"script-src 'self' {_inline_script_hashes(page)} 'wasm-unsafe-eval'",
        "style-src 'self' 'unsafe-inline'",  # model-viewer styles its shadow DOM inline
        "img-src 'self' blob: data:",
        "media-src 'self' blob:",
        "connect-src 'self' blob: data:",
        "worker-src 'self' blob:",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ])
    return {"Content-Security-Policy": policy, "X-Content-Type-Options": "nosniff",
            "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer"}


SECURITY_HEADERS = security_headers(PAGE)
