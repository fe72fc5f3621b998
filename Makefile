# The commands a person types. `make demo` and `make test` set everything up on a fresh machine.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
RTK := $(VENV)/bin/rtk
STAMP := $(VENV)/.installed

# The real CIFAR-10 copy beside the project, when there is one (see README: where data is looked for).
SHARED_DATA := $(abspath ../shared/data/cifar10-jpeg)
ifneq ($(wildcard $(SHARED_DATA)),)
export RTK_DATA ?= $(SHARED_DATA)
endif

.PHONY: install demo test lint format bench docs results clean

install: $(STAMP)

# Rebuilt only when the dependencies change. torch and torchvision are pinned in pyproject.toml
# to the builds these machines hold locally (a range would pull a multi-GB download).
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

# The main job: the whole paper on a CPU budget (13 min on two cores with native bf16, about 37
# without: README).
demo: install
	$(RTK) data info
	$(RTK) models
	$(RTK) reproduce --budget quick --out report

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: lint
	$(PY) -m pytest -q -n 2 --durations=5

# Speed is measured here, side by side in one run, never asserted in timed unit tests.
bench: install
	$(PY) benchmarks/input_pipeline.py
	$(PY) benchmarks/train_throughput.py
	$(PY) benchmarks/cpu_allocator.py
	$(PY) benchmarks/inference.py
	$(PY) benchmarks/cpu_runtimes.py
	$(PY) benchmarks/ray_overhead.py

# Every results table in the README and docs/, regenerated from the run records in results/.
results: install
	$(RTK) report refresh README.md docs/*.md

# The docs site: the CLI reference generated from the Typer app, then a strict build (a broken
# link or a page missing from the navigation fails it). tests/test_docs.py checks both
# generated parts are current.
docs: install
	$(PY) -m typer toolkit.cli.app utils docs --name rtk --title "CLI reference" --output docs/reference/cli.md
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info site
