# gpfuse: `make demo` and `make test` install the pinned environment into .venv first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install browser demo lint test test-shuffled mutation bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test,loggers]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/gpfuse demo

lint: install
	$(BIN)/ruff check src tests benchmarks tools
	$(BIN)/ruff format --check src tests benchmarks tools
	$(BIN)/mypy

# Headless Chromium for tests/test_report_browser.py: installed with apt-get when missing and run as root;
# otherwise one line is printed and those tests skip.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1; then echo "installed chromium"; \
	  else echo "chromium not installed (needs root and apt-get): browser tests will skip"; fi; }

# two pytest-xdist workers (one per core of the 2-core CI machine), each test file kept on one worker so that its
# module fixtures (tiny trained runs, exports) are built once, the slowest files first (tests/conftest.py); the 20
# slowest steps are listed at the end
TEST_WORKERS ?= 2

# the type check runs inside pytest (tests/test_types.py), beside the other tests on the second core
test: install browser
	$(BIN)/ruff check src tests benchmarks tools
	$(BIN)/ruff format --check src tests benchmarks tools
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=20

# the same tests with files, and the tests in each, in a random order (SEED=n repeats one): no test may depend on
# what the tests before it left behind
SEED ?= $(shell date +%s)
test-shuffled: install browser
	@echo "test order seed: $(SEED) (make test-shuffled SEED=$(SEED) repeats it)"
	GPFUSE_TEST_SHUFFLE=$(SEED) $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# mutation testing of metrics/, fusion/, inference/, tasks/gather.py and tasks/resume.py with their fast tests (pyproject.toml [tool.mutmut]):
# lists the surviving mutants and prints the score
mutation: install
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test,loggers,mutation]'
	rm -rf mutants
	OMP_NUM_THREADS=1 $(BIN)/mutmut run --max-children 2 || true  # one thread: mutmut forks after the tests ran torch
	$(BIN)/mutmut results
	@$(BIN)/mutmut results --all true 2>/dev/null | awk '{n++} /: killed$$/ {k++} END {printf "killed %d of %d mutants (%.1f%%)\n", k, n, 100 * k / n}'
	$(BIN)/python tools/mutation_survivors.py > docs/mutation_survivors.md  # every survivor with its line and a reason

bench: install
	$(BIN)/python benchmarks/fusion_scaling.py

clean:
	rm -rf $(VENV) runs .pytest_cache mutants
