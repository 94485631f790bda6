# Graph200K toolkit. `make demo` and `make test` set everything up themselves.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO   ?= build/demo
SHARD  ?= all
STAGES ?=
CONFIG ?= configs/annotate.yaml
SRC    ?= shards/source
OUT    ?= shards/graph200k

.PHONY: install demo test test-all bench ingest annotate clean

# Reinstalled whenever pyproject.toml changes (pins live there).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -e '.[annotate,train,dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m graph200k.fixtures --out $(DEMO)/subjects200k-mini.parquet --rows 20 --bad
	$(PY) -m pipelines.ingest --source $(DEMO)/subjects200k-mini.parquet --out $(DEMO)/shards/source --shard-size 8
	$(PY) -m graph200k.manifest --shards $(DEMO)/shards/source
	$(PY) -m graph200k.sample_tasks --manifest $(DEMO)/shards/source/manifest.parquet --num 500 --seed 0 --out $(DEMO)/tasks-source.jsonl --stats

test: $(STAMP)
	$(PY) -m pytest -q

test-all: $(STAMP)
	$(PY) -m pytest -q -m 'not weights'

bench: $(STAMP)
	$(PY) benchmarks/bench_sampler.py

ingest: $(STAMP)
	$(PY) -m pipelines.ingest --out $(SRC)

clean:
	rm -rf build .pytest_cache
