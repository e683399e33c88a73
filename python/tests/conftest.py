"""Shared fixtures: a throw-away PostgreSQL server (or throw-away databases on the user's
server when BQX_PG_DSN is set), fresh databases, dbt runs against them, and one small
wave-1 build that the feature tests read.

Every connection of the suite, psycopg's and dbt's, runs under a non-UTC session TimeZone
(PGTZ below), so a model that forgot `at time zone 'UTC'` fails its tests."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import psycopg
import pytest
from bqx import server
from bqx.dbt import run_dbt

# The Citus cluster test runs only under `make test-citus` (which starts the cluster and sets
# BQX_CITUS_DSN); without it the module is not collected, so it is neither run nor counted.
collect_ignore = [] if os.environ.get("BQX_CITUS_DSN") else ["test_citus.py"]

# +05:30 and no daylight saving: month, day and hour boundaries all differ from UTC.
os.environ["PGTZ"] = "Asia/Kolkata"
os.environ.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")


@pytest.fixture(scope="session")
def pg_admin_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """DSN from which test databases are created and dropped: BQX_PG_DSN's server, or a
    throw-away embedded one (password-authenticated project role with CREATEDB, database
    `postgres`; destroyed with its service user at the end)."""
    with server.scratch_server(tmp_path_factory.mktemp("pgserver")) as dsn:
        yield dsn


@pytest.fixture(scope="session")
def database_factory(pg_admin_dsn: str) -> Iterator[Callable[[str], str]]:
    """`make("purpose")` → DSN of a new empty database, dropped at the end of the session."""
    created: list[str] = []

    def make(purpose: str) -> str:
        name = f"bqx_test_{purpose}_{uuid.uuid4().hex[:8]}".lower()
        server.create_database(pg_admin_dsn, name)
        created.append(name)
        return server.with_database(pg_admin_dsn, name)

    yield make
    for name in created:
        server.drop_database(pg_admin_dsn, name)


@pytest.fixture(scope="module")
def shared_dsn(database_factory: Callable[[str], str], request: pytest.FixtureRequest) -> str:
    """One database for the test module, named after it (creating and dropping databases costs
    checkpoints: a module shares one)."""
    return database_factory(request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_"))


@pytest.fixture()
def dsn(shared_dsn: str) -> str:
    """The module's database without a `raw` schema: the test starts from a fresh database state."""
    with psycopg.connect(shared_dsn, autocommit=True) as conn:
        conn.execute("drop schema if exists raw cascade")
    return shared_dsn


@pytest.fixture(scope="session")
def dbt_parse_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding dbt's last partial_parse.msgpack: copy it into a new target folder and
    dbt re-reads only what changed (a full parse takes ~40 s)."""
    return tmp_path_factory.mktemp("dbt_parsed")


@pytest.fixture(scope="session")
def dbt_runner(tmp_path_factory: pytest.TempPathFactory, dbt_parse_cache: Path) -> Callable[..., None]:
    """`dbt(dsn, "build", "--select", "tag:wave1", ...)`: runs dbt, fails the test with its log;
    returns dbt's target folder (its compiled SQL)."""

    parsed = dbt_parse_cache

    def run(dsn: str, *args: str) -> Path:
        target = tmp_path_factory.mktemp("dbt_target")
        # dbt's partial parse: each run gets its own target folder (runs may be concurrent), seeded
        # with the last parse so that dbt re-reads only what changed (a full parse takes ~40 s)
        cache = parsed / "partial_parse.msgpack"
        if cache.exists():
            shutil.copyfile(cache, target / cache.name)
        done = run_dbt(list(args), dsn, target_path=target, capture=True)
        if (target / cache.name).exists():
            shutil.copyfile(target / cache.name, parsed / f".{target.name}")
            (parsed / f".{target.name}").replace(cache)
        if done.returncode != 0:
            pytest.fail(f"dbt {' '.join(args)} failed:\n{done.stdout[-6000:]}\n{done.stderr[-3000:]}")
        return target

    return run


def query_frame(dsn: str, sql: str, params: tuple | None = None) -> pd.DataFrame:
    """Rows of a query as a DataFrame (timestamps tz-aware)."""
    with psycopg.connect(dsn) as conn:
        cur = conn.execute(sql, params)
        columns = [col.name for col in cur.description]
        return pd.DataFrame(cur.fetchall(), columns=columns)


def table_columns(dsn: str, schema: str, table: str) -> list[str]:
    """A table's (or view's) columns in their order."""
    return query_frame(
        dsn,
        "select column_name from information_schema.columns "
        "where table_schema = %s and table_name = %s order by ordinal_position",
        (schema, table),
    )["column_name"].tolist()


# The small fixture every feature test reads: 4 pairs (a cross and its legs) over two weeks
# around the default baseline date, with the awkward cases real data has.
FIXTURE_PAIRS = ("EURUSD", "USDJPY", "EURJPY", "GBPUSD")
FIXTURE_START = pd.Timestamp("2024-06-24").date()
FIXTURE_END = pd.Timestamp("2024-07-09").date()
FLAT_PAIR, FLAT_BARS = "GBPUSD", 700  # a constant price for longer than the longest window
ZERO_VOLUME_PAIR, ZERO_VOLUME_BARS = "USDJPY", 300  # zero tick volume for longer than a window


def make_fixture_bars() -> pd.DataFrame:
    """Generated bars with a flat stretch, a zero-volume stretch and some null spreads."""
    from bqx.generate import generate_bars

    bars = generate_bars(FIXTURE_START, FIXTURE_END, list(FIXTURE_PAIRS))
    flat = bars.index[bars["pair"] == FLAT_PAIR][3000 : 3000 + FLAT_BARS]
    level = bars.loc[flat[0], "close"]
    bars.loc[flat, ["open", "high", "low", "close"]] = level
    quiet = bars.index[bars["pair"] == ZERO_VOLUME_PAIR][5000 : 5000 + ZERO_VOLUME_BARS]
    bars.loc[quiet, "volume"] = 0
    gaps = bars.index[bars["pair"] == "EURJPY"][2000:2010]
    bars.loc[gaps, "spread"] = None
    return bars.reset_index(drop=True)


@pytest.fixture(scope="session")
def fixture_bars() -> pd.DataFrame:
    return make_fixture_bars()


def built_pairs_database(
    database_factory: Callable[[str], str],
    dbt_runner: Callable[..., Path],
    fixture_bars: pd.DataFrame,
    name: str,
    pairs: list[str],
    select: str,
) -> tuple[str, pd.DataFrame]:
    """A database of its own holding the fixture's bars of `pairs` with `dbt run --select
    <select>` built on them (for a test that changes what it reads); the DSN and those bars."""
    from bqx.load import load_frame

    dsn = database_factory(name)
    bars = fixture_bars[fixture_bars["pair"].isin(pairs)].reset_index(drop=True)
    load_frame(dsn, bars, "bars")
    dbt_runner(dsn, "run", "--select", select)
    return dsn, bars


@pytest.fixture(scope="session")
def wave1_build(
    database_factory: Callable[[str], str], dbt_runner: Callable[..., Path], fixture_bars: pd.DataFrame
) -> tuple[str, Path]:
    """A database holding the fixture bars and every wave-1 model built from them, and the
    target folder of that build (its compiled SQL)."""
    from bqx.load import load_frame

    dsn = database_factory("wave1")
    load_frame(dsn, fixture_bars, "fixture")
    target = dbt_runner(dsn, "build", "--select", "tag:wave1")
    return dsn, target


@pytest.fixture(scope="session")
def wave1_dsn(wave1_build: tuple[str, Path]) -> str:
    """A database holding the fixture bars and every wave-1 model built from them."""
    return wave1_build[0]
