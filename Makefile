# The two commands of the README: `make demo` and `make test`. Both start from a fresh clone
# with nothing but Python 3.11: they create .venv and install the pinned dependencies.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO_BARS := data/demo_bars
DEMO_START ?= 2024-07-01
DEMO_END   ?= 2024-09-01

.PHONY: install demo test test-citus lint bench clean

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
# the incremental models compute only bars they do not hold yet. The dataset builder reuses
# every pair whose source fingerprint is unchanged and an existing dataset id, so a second
# `make demo` only re-renders the report.
DEMO_BUILT  := .bqx/demo.built
# the builder's peak memory as /usr/bin/time measures it, where that program exists
BUILDER_TIME := $(shell test -x /usr/bin/time && echo "/usr/bin/time -f 'builder: peak memory (/usr/bin/time, max RSS) %M KiB, wall %e s'")
MODEL_FILES := dbt_project.yml $(shell find models macros -type f 2>/dev/null)

demo: $(STAMP) $(DEMO_BARS)/.generated
	$(BIN)/bqx db start
	$(BIN)/bqx load $(DEMO_BARS)
	@$(MAKE) --no-print-directory $(DEMO_BUILT)
	$(BIN)/bqx status
	$(BUILDER_TIME) $(BIN)/python python/build_datasets.py

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
# One pytest process per core (pytest-xdist, at most 4), each with its own throw-away server and
# whole test files (a file's module fixtures are built once): 33 -> 23 minutes on 2 cores. The
# slowest tests are listed at the end. `PYTEST_ARGS=-n0` runs in one process.
test: $(STAMP)
	$(BIN)/python -m pytest --numprocesses=auto --maxprocesses=4 --dist=loadfile --durations=20 $(PYTEST_ARGS)

# The same wave-1 builds on a local Citus cluster (coordinator + 2 workers, PostgreSQL 15) and on
# the same server without distribution, compared bit for bit (python/tests/test_citus.py). The
# cluster is ../shared/citus/cluster.sh (CITUS_CLUSTER overrides; searched in shared/citus/ of the
# folders above this one); it runs as root and TRUSTS every local connection while it runs: only
# on a machine you do not share, and it is stopped when the tests end (a trusting server is not
# left running).
test-citus: $(STAMP)
	@script="$${CITUS_CLUSTER:-}"; dir="$(CURDIR)"; \
	while [ -z "$$script" ] && [ "$$dir" != / ]; do \
	  dir=$$(dirname "$$dir"); [ -x "$$dir/shared/citus/cluster.sh" ] && script="$$dir/shared/citus/cluster.sh"; \
	done; \
	if [ -z "$$script" ] || [ ! -x "$$script" ]; then \
	  echo "make test-citus: no Citus test cluster script (looked for shared/citus/cluster.sh above $(CURDIR)); set CITUS_CLUSTER=/path/to/cluster.sh" >&2; exit 2; \
	fi; \
	dsn=$$("$$script" start | tail -n 1) || { echo "make test-citus: $$script start failed" >&2; exit 2; }; \
	status=0; BQX_CITUS_DSN="$$dsn" $(BIN)/python -m pytest python/tests/test_citus.py $(PYTEST_ARGS) || status=$$?; \
	"$$script" stop >/dev/null || echo "make test-citus: $$script stop failed: stop the cluster by hand (it trusts local connections)" >&2; \
	exit $$status

bench: $(STAMP)
	$(BIN)/python bench/run.py

clean:
	rm -rf target logs .pytest_cache
