# cnnlab — `make demo` and `make test` are the README's quickstart; both set up first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.cnnlab-installed

# torch 2.14.1 + torchvision 0.29.1: the newest pair that installs from this machine's disk without a download, and
# torchvision is needed by the tests (checkpoint compatibility). Override to use another build: make setup TORCH=...
TORCH  ?= torch==2.14.1 torchvision==0.29.1

.PHONY: setup demo test test-slow test-all bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e '.[test]'
	@# Debian's chromium renders the HTML report in the browser test (it skips without one).
	@if ! command -v chromium >/dev/null; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get update -qq && apt-get install -y -qq chromium >/dev/null || \
				echo "chromium could not be installed: tests/test_report_browser.py will skip"; \
		else echo "no chromium and no root apt-get: tests/test_report_browser.py will skip"; fi; \
	fi
	touch $@

# cnnlab finds datasets by name in its data home ($CNNLAB_DATA, else ~/.cache/cnnlab/datasets). Where DATA exists
# (the real data sets beside the checkout, see ../shared/datasets/README.md; never copied into the repo) it is the
# data home of every target here; elsewhere the user's own is, and the demo's preset (download = true) fetches the
# official MNIST into it once.
DATA   ?= ../shared/datasets
ifneq ($(wildcard $(DATA)),)
export CNNLAB_DATA := $(abspath $(DATA))
endif

RUN    ?= runs/demo-$(shell date +%Y%m%d-%H%M%S)

demo: setup
	$(VENV)/bin/cnnlab train --config demo-mnist-mlp --out $(RUN)
	$(VENV)/bin/cnnlab eval $(RUN)
	@echo "curves: $(RUN)/curves.png   confusion matrix: $(RUN)/confusion_test.png"

test: setup
	$(PY) -m pytest -q

test-slow: setup
	$(PY) -m pytest -q -m slow

test-all: setup
	$(PY) -m pytest -q -m ''

# The CPU-sized forms by default (a few minutes on 2 cores); on a GPU: make bench BENCH_ARGS="--device cuda"
BENCH_ARGS ?= --device cpu --quick

CIFAR  := $(DATA)/cifar10-jpeg.tar.gz

bench: setup
	@if [ -f $(CIFAR) ]; then \
		$(PY) benchmarks/data.py $(BENCH_ARGS) --data $(CIFAR) && \
		$(PY) benchmarks/seed_experiment.py $(BENCH_ARGS) --data $(CIFAR) && \
		$(PY) benchmarks/seed_recipe_grid.py $(BENCH_ARGS) --data $(CIFAR) && \
		$(PY) benchmarks/speedrun.py $(BENCH_ARGS) --data $(CIFAR) && \
		$(PY) benchmarks/tensorboard_cost.py $(BENCH_ARGS) --data $(CIFAR); \
	else echo "bench: $(CIFAR) not found, so data.py, seed_experiment.py, seed_recipe_grid.py, speedrun.py and" \
		"tensorboard_cost.py are skipped (point DATA= at the datasets folder)"; fi
	$(PY) benchmarks/throughput.py $(BENCH_ARGS)
	$(PY) benchmarks/step_ops.py $(filter --quick,$(BENCH_ARGS))
	$(PY) benchmarks/step_profile.py $(BENCH_ARGS)
	$(PY) benchmarks/pool_cost.py $(BENCH_ARGS)
	$(PY) benchmarks/stream.py $(BENCH_ARGS) --source $(DATA)/tiny-imagenet-200-train100.tar.gz
	@# cpu.py measures the CPU whatever the device, so it takes only the size; bench_models.py has one size and
	@# takes only the device (without it, a GPU machine's CPU run would time the GPU).
	$(PY) benchmarks/cpu.py $(filter --quick,$(BENCH_ARGS))
	$(PY) benchmarks/cpu_memory.py $(filter --quick,$(BENCH_ARGS))
	$(PY) benchmarks/bench_models.py $(filter-out --quick,$(BENCH_ARGS))
	$(PY) benchmarks/kill_resume.py --kills 10
	$(PY) benchmarks/cli_startup.py $(filter --quick,$(BENCH_ARGS))

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
