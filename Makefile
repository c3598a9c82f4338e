# The two commands of the README: `make image` and `make test`. Both set up the
# host (apt packages, .venv) first and are safe to run again.
PY := .venv/bin/python
SERIES ?= bookworm
IMAGE_ARGS ?= --base bootstrap

.PHONY: setup image test test-vm test-slow lint bench clean

.venv/.installed: pyproject.toml scripts/setup-host.sh
	bash scripts/setup-host.sh
	test -x $(PY) || /usr/bin/python3 -m venv --system-site-packages .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

setup: .venv/.installed

image: setup
	$(PY) -m imagebuilder $(SERIES) $(IMAGE_ARGS)

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy
	.venv/bin/lint-imports

# pytest exits 5 when it collected no test; that is not a failure of the run.
test: lint
	$(PY) -m pytest -m "not slow" tests || [ $$? -eq 5 ]

test-slow: setup
	$(PY) -m pytest -m slow tests || [ $$? -eq 5 ]

bench: setup
	$(PY) -m bench

clean:
	rm -rf .venv .mypy_cache .ruff_cache .pytest_cache
