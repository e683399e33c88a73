# The two commands of the README: `make demo` and `make test`. Both start from a fresh clone
# with nothing but Python 3.11: they create .venv and install the pinned dependencies.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO_BARS := data/demo_bars
DEMO_START ?= 2024-07-01
DEMO_END   ?= 2024-09-01

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

$(DEMO_BARS)/.generated: | $(STAMP)
	$(BIN)/bqx generate --start $(DEMO_START) --end $(DEMO_END) --out $(DEMO_BARS)
	touch $@

# Idempotent: the server is reused, reloading the same files changes nothing, and the
# build (models + data tests) reruns only when the bars, a model or a macro changed; then
# the incremental models compute only bars they do not hold yet.
DEMO_BUILT  := .bqx/demo.built
MODEL_FILES := dbt_project.yml $(shell find models macros -type f 2>/dev/null)

demo: $(STAMP) $(DEMO_BARS)/.generated
	$(BIN)/bqx db start
	$(BIN)/bqx load $(DEMO_BARS)
	@$(MAKE) --no-print-directory $(DEMO_BUILT)
	$(BIN)/bqx status

$(DEMO_BUILT): $(DEMO_BARS)/.generated $(MODEL_FILES)
	$(BIN)/bqx build
	touch $@

# sqlfluff's dbt templater compiles against a live server (is_incremental() looks the
# relation up): the configured one, started if it is the embedded one.
lint: $(STAMP)
	$(BIN)/bqx lint

# pytest starts its own throw-away server (or throw-away databases on BQX_PG_DSN's server),
# runs `dbt build --select tag:wave1` on a small fixture, the tests, and sqlfluff lint
# against that build (the README's `bqx lint`, run as written by python/tests/test_cli.py).
test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python bench/run.py

clean:
	rm -rf target logs .pytest_cache
