# Graph200K toolkit. `make demo` and `make test` set everything up themselves.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO   ?= build/demo
SHARD  ?= all
STAGES ?=
CONFIG ?= configs/annotate.yaml
TINY   ?= build/tiny-models
TINY_CONFIG ?= configs/annotate-tiny.yaml
SRC    ?= shards/source
OUT    ?= shards/graph200k
DEMO_DATA = data.shards=$(DEMO)/shards/graph200k data.manifest=$(DEMO)/shards/graph200k/manifest.parquet
# The tiny configs name build/demo; DEMO=other/dir points every path of theirs there: the
# annotate config is copied with its paths rewritten (its side inputs have no CLI flag),
# the evaluation configs get key=value overrides.
DEMO_ANNOTATE = $(DEMO)/annotate-tiny.yaml
EVAL_MODELS = $(foreach m,clip dino depth inception iqa,models.$(m)=$(DEMO)/eval-models/$(m))
EVAL_DEMO = $(DEMO_DATA) $(EVAL_MODELS)
PORT   ?= 8000

.PHONY: install demo demo-steps demo-tasks demo-grid demo-sheet demo-verify demo-release demo-fill demo-cogvideox demo-eval-models demo-eval-fill demo-eval-cogvideox test test-browser test-weights bench bench-gpu browse ingest annotate publish verify report clean

# Reinstalled whenever pyproject.toml changes (pins live there). pyiqa goes in without its
# dependencies (pyproject.toml, extra `eval`, says why).
PYIQA  := pyiqa==0.1.16
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -e '.[annotate,train,eval,dev]'
	$(PY) -m pip install --disable-pip-version-check -q --no-deps $(PYIQA)
	@# sam2 is an sdist whose build imports torch: built against the torch just installed
	@# (no isolated build env, no CUDA extension). Pins: the `sam2` extra in pyproject.toml.
	SAM2_BUILD_CUDA=0 $(PY) -m pip install --disable-pip-version-check -q --no-build-isolation \
		sam2==1.1.0 hydra-core==1.3.8 iopath==0.1.10
	touch $(STAMP)

install: $(STAMP)

# Debian's chromium for the real-browser test (tests/test_browse_browser.py), once.
BROWSER_STAMP := $(VENV)/.chromium
$(BROWSER_STAMP): | $(STAMP)
	@# Not stamped when the install fails: the next `make test` tries again (the test skips).
	@SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	if [ -x /usr/bin/chromium ] || { $$SUDO apt-get update -q && \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }; then \
		touch $@; \
	else echo "chromium could not be installed: tests/test_browse_browser.py will be skipped"; fi

demo: $(STAMP) $(DEMO_ANNOTATE)
	$(PY) -m graph200k.fixtures --out $(DEMO)/subjects200k-mini.parquet --rows 20 --bad
	$(PY) -m pipelines.ingest --source $(DEMO)/subjects200k-mini.parquet --out $(DEMO)/shards/source --shard-size 8
	@# Every stage of the tiny config, on tiny random models built from config (no hub).
	OMP_NUM_THREADS=1 $(PY) -m annotators.tiny_models --out $(TINY)
	$(PY) -m pipelines.annotate --shards all --config $(DEMO_ANNOTATE) --src $(DEMO)/shards/source --out $(DEMO)/shards/graph200k --num-cpus 2
	@# 40 % of the keys held out as split `test` (1 % by default): the demo's evaluation draws from them.
	$(PY) -m graph200k.manifest --shards $(DEMO)/shards/graph200k --test-fraction 0.4
	@# The rest only reads the shards and the manifest, and nearly every step is one thread:
	@# two at a time on 2 cores (demo-steps below), each step's output printed whole when done.
	@$(MAKE) --no-print-directory -j2 --output-sync=target demo-steps
	@echo "demo: shards, manifest, tasks, previews (grid.png, sheet.png), runs, inference outputs and eval*/metrics.md are in $(DEMO)/"
	@echo "demo: look at it in a browser: make browse DEMO=$(DEMO)   (then open http://127.0.0.1:$(PORT)/)"

# demo-steps: what `make demo` runs after the manifest, as a graph of steps (`make demo`
# runs them; alone they assume the annotated shards and manifest are there).
DEMO_MANIFEST = $(DEMO)/shards/graph200k/manifest.parquet
DEMO_READ = --shards $(DEMO)/shards/graph200k --manifest $(DEMO_MANIFEST)
demo-steps: demo-eval-fill demo-eval-cogvideox demo-grid demo-sheet demo-verify demo-release
demo-tasks:
	$(PY) -m graph200k.sample_tasks --manifest $(DEMO_MANIFEST) --num 500 --seed 0 --out $(DEMO)/tasks.jsonl --stats
demo-grid: demo-tasks
	$(PY) -m graph200k.preview --tasks $(DEMO)/tasks.jsonl --task 7 $(DEMO_READ) --out $(DEMO)/grid.png
demo-sheet:
	$(PY) -m graph200k.preview --key 0000004 $(DEMO_READ) --out $(DEMO)/sheet.png
demo-verify:
	$(PY) -m graph200k.verify --shards $(DEMO)/shards/graph200k
demo-release:
	$(PY) -m graph200k.publish --src $(DEMO)/shards/graph200k --to file://$(abspath $(DEMO))/release
	$(PY) -m graph200k.load_release $(DEMO)/release
# Tiny random models built from config, trained a few steps on the demo shards. One thread
# each: on 2 shared cores that is 5x faster than torch's default (measured).
demo-fill: demo-tasks
	OMP_NUM_THREADS=1 $(PY) -m train.fill --config configs/train/fill-tiny.yaml $(DEMO_DATA) model.pretrained=$(DEMO)/models/tiny-flux-fill train.out_dir=$(DEMO)/runs/fill-tiny
	OMP_NUM_THREADS=1 $(PY) -m train.infer_fill --model $(DEMO)/models/tiny-flux-fill --lora $(DEMO)/runs/fill-tiny/lora --task $(DEMO)/tasks.jsonl --line 7 $(DEMO_READ) --res 32 --steps 4 --dtype float32 --max-sequence-length 32 --out $(DEMO)/infer_fill
demo-cogvideox:
	OMP_NUM_THREADS=1 $(PY) -m train.cogvideox --config configs/train/cogvideox-tiny.yaml $(DEMO_DATA) model.pretrained=$(DEMO)/models/tiny-cogvideox train.out_dir=$(DEMO)/runs/cogvideox-tiny
	OMP_NUM_THREADS=1 $(PY) -m train.infer_cogvideox --model $(DEMO)/models/tiny-cogvideox --lora $(DEMO)/runs/cogvideox-tiny/lora $(DEMO_READ) --key 0000004 --node canny --resolution 32 --steps 4 --out $(DEMO)/infer_cogvideox/target.png
# The papers' metric tables for both tiny LoRAs, on held-out tasks, tiny metric networks.
demo-eval-models:
	OMP_NUM_THREADS=1 $(PY) -m train.evaluate.tiny_models --out $(DEMO)/eval-models
demo-eval-fill: demo-fill demo-eval-models
	OMP_NUM_THREADS=1 $(PY) -m train.evaluate --config configs/eval/fill-tiny.yaml $(EVAL_DEMO) model.pretrained=$(DEMO)/models/tiny-flux-fill "model.loras=[$(DEMO)/runs/fill-tiny/lora]" out_dir=$(DEMO)/eval
demo-eval-cogvideox: demo-cogvideox demo-eval-models
	OMP_NUM_THREADS=1 $(PY) -m train.evaluate --config configs/eval/cogvideox-tiny.yaml $(EVAL_DEMO) model.pretrained=$(DEMO)/models/tiny-cogvideox "model.loras=[$(DEMO)/runs/cogvideox-tiny/lora]" out_dir=$(DEMO)/eval-cogvideox

# The tiny annotate config with its build/demo paths pointing at $(DEMO).
$(DEMO_ANNOTATE): $(TINY_CONFIG)
	@mkdir -p $(@D)
	sed 's#build/demo/#$(DEMO)/#g' $(TINY_CONFIG) > $@.tmp && mv $@.tmp $@

# A read-only web view of a shard set on http://127.0.0.1:$(PORT)/ (docs/browse.md).
# make browse [DEMO=build/demo] | make browse BROWSE_SHARDS=s3://bucket/graph200k
BROWSE_SHARDS ?= $(DEMO)/shards/graph200k
browse: $(STAMP)
	$(PY) -m graph200k.browse --shards $(BROWSE_SHARDS) --port $(PORT)

test: $(STAMP) $(BROWSER_STAMP)
	$(PY) -m pytest -q

# The browser test's Chromium comes from Debian (no browser download; Playwright drives it).
test-browser: $(STAMP) $(BROWSER_STAMP)
	$(PY) -m pytest -q tests/test_browse_browser.py

# Real-weights smoke tests: skipped unless the weights are in the local HF cache (README).
# GRAPH200K_TEST_GPU=1: the GPUs stay visible (tests/conftest.py hides them from the CPU suite).
test-weights: $(STAMP)
	GRAPH200K_TEST_GPU=1 $(PY) -m pytest -q -m weights

# Benchmarks print `name: value` lines, ratios last. `--gpu` modes need a CUDA machine.
bench: $(STAMP)
	$(PY) benchmarks/bench_sampler.py
	$(PY) benchmarks/bench_degradations.py
	$(PY) benchmarks/bench_stream.py
	$(PY) benchmarks/bench_annotate.py
	$(PY) benchmarks/bench_models.py
	$(PY) benchmarks/bench_fill.py
	$(PY) benchmarks/bench_cogvideox.py
	OMP_NUM_THREADS=1 $(PY) benchmarks/bench_generative.py

# Every GPU figure in one run (< 8 min on one CUDA GPU, random weights of the real configs,
# no network): a `name: value` table and build/bench-gpu.json; `--readme-table` renders it.
# Without CUDA it refuses; `python benchmarks/bench_gpu.py --dry-run` checks it on the CPU.
bench-gpu: $(STAMP)
	$(PY) benchmarks/bench_gpu.py --json build/bench-gpu.json
	$(PY) benchmarks/bench_gpu.py --readme-table build/bench-gpu.json

ingest: $(STAMP)
	$(PY) -m pipelines.ingest --out $(SRC)

# make annotate SHARD=3 | SHARD=0-99 | SHARD=all [STAGES=canny,hed] [CONFIG=...] [FORCE=1]
#   [RETRY=1: only the failed samples] [VERIFY=1: check complete sidecars' sha256]
# SRC and OUT may be folders or fsspec URLs (s3://bucket/source ...). With RAY_ADDRESS set,
# the same command runs on that Ray cluster.
annotate: $(STAMP)
	$(PY) -m pipelines.annotate --shards $(SHARD) --config $(CONFIG) --src $(SRC) --out $(OUT) $(if $(STAGES),--stages $(STAGES)) $(if $(FORCE),--force) $(if $(RETRY),--retry-failed) $(if $(VERIFY),--verify)

# Every shard and manifest against its checksums (exit 1 and a repair command per problem).
verify: $(STAMP)
	$(PY) -m graph200k.verify --shards $(OUT)

# Which shards are complete for which stages, failures across shards (from the stats).
report: $(STAMP)
	$(PY) -m pipelines.report --out $(OUT)

# make publish TO=hf://datasets/ORG/NAME | TO=s3://bucket/graph200k | TO=/some/folder
publish: $(STAMP)
	$(PY) -m graph200k.publish --src $(OUT) $(if $(TO),--to $(TO))

clean:
	rm -rf build .pytest_cache
