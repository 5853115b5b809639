# Two commands set up a fresh machine:  `make serve` runs the server, `make test` the tests.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
CHECKPOINTS_DIR ?= checkpoints
export CHECKPOINTS_DIR

.PHONY: serve test bench lint clean

# torch first, pinned: the CPU wheel here; an unpinned torch would pull GBs of CUDA packages.
# Then the project, constrained to the versions the images ship (requirements-serverless.txt),
# so the tests run diffusers, transformers and the rest exactly as deployed.
$(VENV)/.installed: pyproject.toml requirements-serverless.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c requirements-serverless.txt -e '.[test,serverless]'
	touch $@

# The web page's JavaScript (model-viewer, three, gaussian-splats-3d) from npm, as locked.
# Without npm the page still works, without its 3D viewers.
web/node_modules/.package-lock.json: web/package-lock.json
	@if command -v npm >/dev/null; then cd web && npm ci --no-audit --no-fund; \
	else echo "npm not found: the web page will have no 3D viewers (install Node.js 18+)"; fi

$(CHECKPOINTS_DIR)/lotus-depth-d-v2-0-disparity: | $(VENV)/.installed
	$(PY) scripts/make_tiny_checkpoints.py $(CHECKPOINTS_DIR)

## serve: the development server on http://localhost:$${PORT:-8000} (tiny Lotus-D if no real one)
serve: $(VENV)/.installed $(CHECKPOINTS_DIR)/lotus-depth-d-v2-0-disparity web/node_modules/.package-lock.json
	$(VENV)/bin/gunicorn -c gunicorn.conf.py

## test: the whole suite (unit, HTTP, end-to-end with gunicorn and curl)
test: $(VENV)/.installed web/node_modules/.package-lock.json
	$(PY) -m pytest $(PYTEST_ARGS)

## bench: server, load and depth figures on this machine (each makes its own tiny checkpoint)
bench: $(VENV)/.installed
	$(PY) bench/server.py
	$(PY) bench/load.py
	$(PY) bench/depth.py

clean:
	rm -rf $(VENV) outputs .pytest_cache web/node_modules artifacts
