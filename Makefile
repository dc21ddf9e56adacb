# Two commands do everything on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.lt_plugin-installed
OFFLINE := HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1

.PHONY: demo test install bench-accuracy bench-speed bench-fidelity results

install: $(STAMP)

# torch 2.14.1 / torchvision 0.29.1 are the pair that works with timm here (see README, "Installing").
$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[test]'
	touch $@

demo: $(STAMP)
	$(OFFLINE) $(VENV)/bin/lt-plugin imp --recipe demo --model resnet18 --dataset digits --out runs/demo
	$(OFFLINE) $(VENV)/bin/lt-plugin lottery-pools --run runs/demo

test: $(STAMP)
	$(OFFLINE) $(PY) -m pytest -q --durations=15

# The README's Results section (needs Debian's dataset-fashion-mnist): about an hour, and under 15 minutes.
bench-accuracy: $(STAMP)
	$(OFFLINE) $(PY) benchmarks/accuracy.py

bench-speed: $(STAMP)
	$(OFFLINE) $(PY) benchmarks/speed.py
	$(OFFLINE) $(PY) benchmarks/cost_growth.py

# benchmarks/README.md's Fidelity section (the papers' networks, needs dataset-fashion-mnist): about an hour.
bench-fidelity: $(STAMP)
	$(OFFLINE) $(PY) benchmarks/fidelity.py --work runs/fidelity

# The README's Results and benchmarks/README.md's tables and claims, rendered from benchmarks/results/*.json.
results: $(STAMP)
	$(OFFLINE) $(PY) benchmarks/render.py
