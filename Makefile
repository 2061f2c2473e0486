# inference_assets: `make run` (whole pipeline), `make test` (whole suite) and `make test-fast` set everything up.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Runs from `make run` and `make dev` share one Dagster instance, so the UI shows both.
DAGSTER_HOME ?= $(CURDIR)/.dagster_home
export PYTHONWARNINGS ?= ignore::DeprecationWarning,ignore::UserWarning

.PHONY: install instance run ci test test-fast dev backfill screenshots bench bench-scale gpu-wheels gpu-check clean

install: $(STAMP)

# Creates .venv if it is missing and installs the project with its test dependencies.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev]' > $(VENV)/pip.log 2>&1 \
		|| (grep -v "^WARNING: Location" $(VENV)/pip.log; exit 1)
	$(BIN)/python -c "import inference_assets.definitions, torchvision, timm, duckdb"
	touch $(STAMP)

## run: materialize every asset over every partition, print a summary (RUN_ARGS: e.g. --progress log,
## --log-level INFO; see python -m inference_assets.run --help)
run: $(STAMP) instance
	DAGSTER_HOME=$(DAGSTER_HOME) $(BIN)/python -m inference_assets.run $(RUN_ARGS)

## ci: the CI gate (.github/workflows/inference.yml runs it): `dagster definitions validate`, then `make run`
## (every partition, evaluation and report); exits non-zero when the code location does not load or any
## asset check fails, naming the check, its measured value and its threshold. Here INFERENCE_MAX_FAILURE_RATE
## defaults to 0.5; INFERENCE_MIN_TOP1 and INFERENCE_MAX_CLASS_SHARE are off unless set
ci: $(STAMP) instance
	DAGSTER_HOME=$(DAGSTER_HOME) $(BIN)/dagster definitions validate -w workspace.yaml
	DAGSTER_HOME=$(DAGSTER_HOME) INFERENCE_MAX_FAILURE_RATE=$${INFERENCE_MAX_FAILURE_RATE:-0.5} \
		$(BIN)/python -m inference_assets.run $(RUN_ARGS)

## test: the whole test suite, in TEST_WORKERS pytest-xdist processes (default 2; each test file stays in one
## process, the longest files first: conftest.LONGEST_FIRST): most of the suite waits on Dagster subprocesses,
## servers and the daemon, so two run side by side
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

## test-fast: the everyday subset, under 3 minutes on 2 cores: the tests marked `fast` (core units, resources,
## checks, a few materialize() runs; no make run, server or browser; `make test` runs them too)
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m fast $(PYTEST_ARGS)

## dev: the Dagster UI on http://127.0.0.1:3000 and its daemon (run queue, backfills, and the refresh_results
## automation sensor: prediction_results, evaluation and report follow new prediction files by themselves)
dev: $(STAMP) instance
	DAGSTER_HOME=$(DAGSTER_HOME) $(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

## instance: the Dagster instance in $(DAGSTER_HOME): installs deploy/dagster.yaml (run queue, pool
## limits) there if its dagster.yaml is missing or empty; never overwrites a non-empty one. Creates
## its storage once, under a lock (two processes on a fresh home would both run its migrations)
instance:
	@mkdir -p $(DAGSTER_HOME)
	@test -s $(DAGSTER_HOME)/dagster.yaml || { cp deploy/dagster.yaml $(DAGSTER_HOME)/dagster.yaml \
		&& echo "installed deploy/dagster.yaml as $(DAGSTER_HOME)/dagster.yaml"; }
	@test -e $(DAGSTER_HOME)/history/runs.db || ! test -x $(BIN)/python \
		|| DAGSTER_HOME=$(DAGSTER_HOME) $(BIN)/python -m inference_assets.instance_guard

## backfill: with `make dev` running, queue one run per partition of preprocessed_images +
## prediction_files (PARTITIONS=shard-00,shard-03 for some; default all), after refreshing the manifest.
## `make dev`'s daemon launches them as the run queue allows (deploy/dagster.yaml), with make dev's
## INFERENCE_* settings; once the last of them is done, its refresh_results automation sensor runs
## prediction_results, evaluation and report once (within about 30 s). Watch both in the UI.
backfill: $(STAMP) instance
	DAGSTER_HOME=$(DAGSTER_HOME) $(BIN)/dagster asset materialize -m inference_assets.definitions --select image_manifest
	DAGSTER_HOME=$(DAGSTER_HOME) $(BIN)/dagster job backfill -w workspace.yaml -j partitioned_inference \
		$(if $(PARTITIONS),--partitions $(PARTITIONS),--all) --noprompt

## screenshots: the README's pictures (docs/images/): the asset graph in the Dagster UI and the
## HTML report, after a run on data/images in a temporary instance (needs Chromium)
screenshots: $(STAMP)
	$(BIN)/python -m tools.screenshots

## bench: throughput and memory against Ray Data, a DataLoader loop, a per-image loop and the limits, and each
## model of a model list (Lite0, Lite1, Lite2, their ensemble) with their agreement
## (BENCH_IMAGES, BENCH_REPEATS, ... : see bench/run.py); results in bench/results/
bench: $(STAMP) $(VENV)/.bench-installed
	$(BIN)/python -m bench.run

## bench-scale: the same, plus the project alone at 20,000 images (speed and memory vs 2,000)
bench-scale: $(STAMP) $(VENV)/.bench-installed
	BENCH_SCALE=$${BENCH_SCALE:-20000} $(BIN)/python -m bench.run

$(VENV)/.bench-installed: pyproject.toml $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]' > $(VENV)/pip-bench.log 2>&1 \
		|| (grep -v "^WARNING: Location" $(VENV)/pip-bench.log; exit 1)
	touch $@

GPU_WHEELS ?= dist/gpu-wheels
GPU_OUT ?= bench/results/gpu-check-$(shell date -u +%Y-%m-%d)

## gpu-wheels: the wheel folder make gpu-check installs from on a GPU machine without a package registry
## ($(GPU_WHEELS), under 60 MiB: the project and what Python 3.12 with torch, torchvision, timm, pyarrow and
## pandas lacks; see bench/gpu_wheels.py). Needs the registry; carry the folder to the GPU machine
gpu-wheels: $(STAMP)
	$(BIN)/python -m bench.gpu_wheels --out $(GPU_WHEELS)

## gpu-check: the GPU path on a real GPU in one command (CUDA tests, GPU benchmark, JPEG decoding on the GPU;
## bench/gpu_check.py), results in GPU_OUT (default bench/results/gpu-check-<date>). Uses .venv where make install
## made one; otherwise (a GPU machine) installs $(GPU_WHEELS) into .gpu-site with $(PYTHON), offline. On a machine
## without CUDA it runs the CPU-possible parts (GPU_CHECK_ARGS: e.g. --images 1000 --repeats 3)
gpu-check:
	@if [ -e $(STAMP) ]; then py="$(BIN)/python"; else \
		test -d $(GPU_WHEELS) || { echo "gpu-check: no $(VENV) (make install) and no $(GPU_WHEELS) (make gpu-wheels where a registry is reachable)"; exit 2; }; \
		$(PYTHON) -m pip install --quiet --no-index --no-deps --upgrade --target .gpu-site $(GPU_WHEELS)/*.whl || exit 2; \
		py="env PYTHONPATH=$(CURDIR):$(CURDIR)/.gpu-site $(PYTHON)"; \
	fi; \
	$$py -m bench.gpu_check --out $(GPU_OUT) $(GPU_CHECK_ARGS)

## clean: remove generated outputs (keeps .venv and the Dagster instance)
clean:
	rm -rf data/work data/warehouse.duckdb data/warehouse.duckdb.wal
