# The two set-up commands of the README: `make demo` (main job end to end) and `make test`.
# Both build .venv on first use. torch is installed first (TORCH_SPEC, the CPU wheel from local disk here) so that
# nothing pulls a CUDA build; on a GPU host pass TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu126"
# or pre-install your CUDA torch into .venv: an importable torch is never replaced. The `spark` extra (pyspark, for
# --engine spark and its tests) needs a Java 17+ runtime on the machine: apt-get install openjdk-17-jre-headless.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
export MLFLOW_SKIP_PIP_REQUIREMENTS_CHECK ?= true
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

.PHONY: setup demo test bench clean

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e ".[dev,spark]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/txseq-demo

test: setup
	$(BIN)/python -m pytest -q -n auto --dist loadgroup

clean:
	rm -rf $(VENV) .pytest_cache
