# The two commands of the README: `make run` and `make test`. Both install what they need.
UV ?= $(shell command -v uv 2>/dev/null || echo .venv-tools/bin/uv)
PY := .venv/bin/python

.PHONY: install run test lint typecheck unit bench dev-broker clean

$(UV):
	python3 -m venv .venv-tools && .venv-tools/bin/pip install -q uv

.venv/.installed: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --quiet
	touch $@

install: .venv/.installed

run: install
	PYTHONPATH=examples .venv/bin/headrace run examples/order-fulfilment.yaml --tasks shop \
		-i order_id=A-1001 --input-file examples/small-order.json

lint: install
	.venv/bin/ruff check headrace tests examples bench
	.venv/bin/ruff format --check headrace tests examples bench

typecheck: install
	.venv/bin/mypy

unit: install
	.venv/bin/pytest -q tests/unit

# PYTHONFAULTHANDLER: a crash even after pytest's own handler is gone prints its stacks
test: lint typecheck
	PYTHONFAULTHANDLER=1 .venv/bin/pytest -q

BACKEND ?= sqlite+memory
READ_RUNS ?= 100000

# The workloads, then the read models at scale on Postgres (READ_RUNS=1000000: about an hour)
bench: install
	BACKEND=$(BACKEND) $(PY) -m bench
	$(PY) -m bench.readmodels --runs $(READ_RUNS)

# The bundled Kafka-protocol broker (tansu, memory storage) on 127.0.0.1:9092 until Ctrl-C.
dev-broker: install
	.venv/bin/headrace dev-broker

clean:
	rm -rf .venv .venv-tools .headrace .mypy_cache .pytest_cache .ruff_cache
