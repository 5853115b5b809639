"""The web page: `/` (web/static/index.html), its static files (Flask's static folder,
set in app.py) and `/vendor/<name>`, the page's JavaScript from web/node_modules. Open to
all (api/auth.py OPEN_PATHS, OPEN_PREFIXES); the API behind it is not."""

from __future__ import annotations

from pathlib import Path

from flask import Flask, send_file

from .errors import ApiError

WEB = Path(__file__).resolve().parent.parent / "web"
# The page's JavaScript, from the npm packages pinned in web/package-lock.json (`npm ci`
# in web/): served here, never from a CDN, so an offline pod shows the page too.
VENDOR_FILES = {
    # the module build imports "three" (the page's import map) where model-viewer.min.js
    # bundles a copy of its own: one three.js on the page, not two
    "model-viewer-module.min.js": "@google/model-viewer/dist/model-viewer-module.min.js",
    "three.module.min.js": "three/build/three.module.min.js",
    "three.core.min.js": "three/build/three.core.min.js",
    "gaussian-splats-3d.module.js": "@mkkellogg/gaussian-splats-3d/build/gaussian-splats-3d.module.js",
    **{name: f"three/examples/jsm/{folder}/{name}" for folder, name in (
        ("loaders", "OBJLoader.js"), ("loaders", "MTLLoader.js"), ("loaders", "STLLoader.js"),
        ("loaders", "PLYLoader.js"),
        ("controls", "OrbitControls.js"), ("libs", "fflate.module.js"))},
}


def add_routes(app: Flask) -> None:
    @app.get("/")
    def web_page():
        return send_file(WEB / "static" / "index.html", max_age=0)

    @app.get("/vendor/<name>")
    def vendor(name):
        if name not in VENDOR_FILES:
            raise ApiError(404, "no such file")
        path = WEB / "node_modules" / VENDOR_FILES[name]
        if not path.is_file():
            raise ApiError(404, f"{name} is not installed: run `npm ci` in web/")
        return send_file(path, mimetype="text/javascript", max_age=3600)
