# make demo: the offline demo study; make test: the test suite; make bench: the benchmarks of docs/performance.md
# (about 30 minutes on 2 CPU cores; each appends its table there). Each sets up .venv itself when needed.
# GPU users: make TORCH_SPEC='torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128' test
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
DATA ?= ../shared/data/sumpubmed
BIN := $(VENV)/bin

.PHONY: demo test bench lint clean

$(BIN)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_SPEC)
	$(BIN)/pip install -q -e '.[dev,ray]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/medsum demo --data $(DATA) --output runs/demo

# the whole suite, `slow` tests included (they add ~20 s); a bare `pytest` skips them for a quick loop
test: $(BIN)/.installed
	$(BIN)/python -m pytest -q -m ''

bench: $(BIN)/.installed
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/end_to_end.py --omp-passive --repeats 2
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/train_step.py --omp-passive
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/generate.py --omp-passive

lint: $(BIN)/.installed
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs
