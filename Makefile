# Two commands set up a fresh machine:  `make serve` runs the server, `make test` the tests.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
CHECKPOINTS_DIR ?= checkpoints
export CHECKPOINTS_DIR

.PHONY: serve test bench lint clean

# torch first, pinned: the CPU wheel here; an unpinned torch would pull GBs of CUDA packages.
# Then the project, constrained to the versions the images ship (requirements-serverless.txt).
# `make serve` installs what serving needs (the `serve` extra); `make test` adds the test and
# serverless extras (selenium, schemathesis, runpod...). pip runs quiet: each step says what
# it does first.
$(VENV)/.serve-installed: pyproject.toml requirements-serverless.txt
	@echo "==> 1/4 Python packages into $(VENV): torch (CPU) and the server's (about 2 minutes and 2.5 GB the first time)"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c requirements-serverless.txt -e '.[serve]'
	touch $@

$(VENV)/.test-installed: $(VENV)/.serve-installed
	@echo "==> the test and serverless extras into $(VENV)"
	$(PY) -m pip install -q -c requirements-serverless.txt -e '.[serve,test,serverless]'
	touch $@

# The web page's JavaScript (model-viewer, three, gaussian-splats-3d) from npm, as locked.
# Without npm the page still works, without its 3D viewers (it says so, and how to get them).
web/node_modules/.package-lock.json: web/package-lock.json
	@echo "==> 3/4 the web page's 3D viewers (npm ci in web/)"
	@if command -v npm >/dev/null; then cd web && npm ci --no-audit --no-fund; \
	else echo "npm not found: the web page will have no 3D viewers (install Node.js 18+, then make serve again)"; fi

$(CHECKPOINTS_DIR)/lotus-depth-d-v2-0-disparity: | $(VENV)/.serve-installed
	@echo "==> 2/4 tiny random Lotus-D test weights in $(CHECKPOINTS_DIR)/ (its maps are noise; DEPLOY.md gets the real ones)"
	$(PY) scripts/make_tiny_checkpoints.py $(CHECKPOINTS_DIR)

## serve: the development server on http://localhost:$${PORT:-8000} (tiny Lotus-D if no real one)
serve: $(VENV)/.serve-installed $(CHECKPOINTS_DIR)/lotus-depth-d-v2-0-disparity web/node_modules/.package-lock.json
	@echo "==> 4/4 serving on http://localhost:$${PORT:-8000}: open it in a browser, Ctrl-C stops it"
	$(VENV)/bin/gunicorn -c gunicorn.conf.py

## test: the whole suite (unit, HTTP, end-to-end with gunicorn and curl)
test: $(VENV)/.test-installed web/node_modules/.package-lock.json
	$(PY) -m pytest $(PYTEST_ARGS)

## bench: server, load and depth figures on this machine (each makes its own tiny checkpoint)
bench: $(VENV)/.test-installed
	$(PY) bench/server.py
	$(PY) bench/load.py
	$(PY) bench/depth.py

clean:
	rm -rf $(VENV) outputs .pytest_cache web/node_modules artifacts
