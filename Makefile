# Set-up and run targets. Everything installs into a virtual environment in
# .venv (override with VENV=...), so a fresh machine needs only Python 3.11.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The search over MongoDB: `make run_hyperopt MONGO_DB_HOST=...` queues trials,
# `make run_hyperopt_worker MONGO_DB_HOST=...` on each GPU box trains them.
EXPERIMENT_NAME ?= hyperopt_keras_cifar100
MONGO_DB_PORT ?= 27017
export EXPERIMENT_NAME MONGO_DB_HOST MONGO_DB_PORT

.PHONY: install_req install_req_gpu install_dev install_graph_viz install_compose run_hyperopt run_hyperopt_worker test test-fast bench clean_results

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

install_req: $(BIN)/python
	$(BIN)/pip install -r requirements.txt

# TensorFlow with its CUDA libraries, for NVIDIA GPUs.
install_req_gpu: $(BIN)/python
	$(BIN)/pip install -r requirements-gpu.txt

install_dev: $(BIN)/python
	$(BIN)/pip install -r requirements-dev.txt

# graphviz draws model_demo.png and model_best.png (Debian/Ubuntu; needs root).
# Without it the search still runs and says once that it cannot draw.
install_graph_viz:
	@command -v dot >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && $$SUDO apt-get install -y -q graphviz; } \
	  || echo "warning: could not install graphviz; model plots will be skipped"

# Compose v1 as Debian ships it (docker-compose 1.29): the tests run its
# `config` on local_infra/docker-compose.yml (no Docker engine needed).
install_compose:
	@command -v docker-compose >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && $$SUDO apt-get install -y -q docker-compose; } \
	  || echo "warning: could not install docker-compose; its tests will be skipped"

run_hyperopt: install_req install_graph_viz
	$(BIN)/python hyperopt_optimize.py

run_hyperopt_worker: install_req
	$(BIN)/python hyperopt_mongo_worker.py

# Two test processes (pytest-xdist): most slow tests wait on subprocesses,
# heartbeats and timeouts, so two share a 2-core machine well. TEST_WORKERS=0
# runs them one after another.
TEST_WORKERS ?= 2
TEST_FLAGS := -q $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist worksteal)
test: install_dev install_graph_viz install_compose
	$(BIN)/python -m pytest $(TEST_FLAGS) tests

# The quick part of the suite, while you work: the tests marked slow (searches
# and MongoDB in subprocesses, JAX, the benchmark) are left out.
test-fast: install_dev install_graph_viz install_compose
	$(BIN)/python -m pytest $(TEST_FLAGS) -m "not slow" tests

# Throughput against a plain Keras reference, trial overhead, TPE latency and
# memory, on a synthetic data set; `make bench BENCH_ARGS=--quick` for a short run.
BENCH_ARGS ?=
bench: install_req
	$(BIN)/python benchmark.py --out bench.json $(BENCH_ARGS)

clean_results:
	./delete_results.sh -y
