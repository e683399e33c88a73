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
# incremental models only compute bars they do not hold yet.
demo: $(STAMP) $(DEMO_BARS)/.generated
	$(BIN)/bqx db start
	$(BIN)/bqx load $(DEMO_BARS)
	$(BIN)/bqx build
	$(BIN)/bqx status

lint: $(STAMP)
	$(BIN)/python -c "from bqx.dbt import profiles_dir; profiles_dir()"
	$(BIN)/sqlfluff lint models analyses tests

# pytest starts its own throw-away server (or throw-away databases on BQX_PG_DSN's server)
# and runs `dbt build --select tag:wave1` on a small fixture; then the SQL lint.
test: $(STAMP)
	$(BIN)/python -m pytest
	$(MAKE) lint

bench: $(STAMP)
	$(BIN)/python bench/run.py

clean:
	rm -rf target logs .pytest_cache
