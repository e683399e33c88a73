"""`bqx`: the command line of the feature store. Each subcommand wires one module's functions."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bqx import server
from bqx.bar_formats import FORMATS
from bqx.dbt import PROJECT_DIR, run_dbt
from bqx.raw_schema import PRICE_MAX, PRICE_MIN


def _dsn() -> str:
    return server.configured_dsn(PROJECT_DIR)


def _ensure_server() -> str:
    """The configured DSN, starting the embedded server first when it is the one in use."""
    import os

    if os.environ.get("BQX_PG_DSN"):
        return os.environ["BQX_PG_DSN"]
    cluster = server.cluster_for(PROJECT_DIR)
    return server.start(cluster, link=PROJECT_DIR / ".bqx" / "pgdata")


def cmd_db(args: argparse.Namespace) -> int:
    import os

    external = os.environ.get("BQX_PG_DSN")
    if args.action == "url":
        print(_dsn())
        return 0
    if args.action == "status":
        print(json.dumps(server.server_status(PROJECT_DIR), indent=2))
        return 0
    if external:
        print(f"BQX_PG_DSN is set: using that server, nothing to {args.action}")
        return 0
    cluster = server.cluster_for(PROJECT_DIR)
    if args.action == "start":
        dsn = server.start(cluster, link=PROJECT_DIR / ".bqx" / "pgdata")
        print(f"PostgreSQL running: {dsn} (data in {PROJECT_DIR / '.bqx' / 'pgdata'})")
    elif args.action == "stop":
        print("stopped" if server.stop(cluster) else "not running")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from bqx.generate import generate_command

    generate_command(args.start, args.end, args.pairs, Path(args.out), args.format, args.seed)
    return 0


# exit codes of `bqx load` (README, "Your own files"; `bqx load --help`)
LOAD_EXIT_OK = 0  # every file loaded (rejected rows are normal: they are counted and recorded)
LOAD_EXIT_FATAL = 2  # nothing more was loaded: a bad option, the server unreachable, ...
LOAD_EXIT_FILES_SKIPPED = 3  # some files or paths were skipped (each named, with why); the others loaded
LOAD_EXIT_CODES = f"""exit status:
  {LOAD_EXIT_OK}  every file loaded (rows that break a rule are rejected, counted and kept in
     raw.m1_rejects: that is normal)
  {LOAD_EXIT_FILES_SKIPPED}  some files or paths were not loaded (each is named on stderr with the reason);
     all the others loaded
  {LOAD_EXIT_FATAL}  a fatal error (a bad option, the database unreachable or failing): the load stopped
"""


def cmd_load(args: argparse.Namespace) -> int:
    """`bqx load`: one line on stderr per problem, never a traceback; the exit codes above."""
    import psycopg

    from bqx.load import LoadError, PlausibleRanges, format_summary, load_paths, printable

    try:
        ranges = PlausibleRanges(
            min_price=args.min_price, max_price=args.max_price, future_minutes=args.future_minutes
        )
        dsn = _ensure_server()
        summary = load_paths(
            dsn, args.paths, fmt=args.format, pair=args.pair, ranges=ranges, follow_symlinks=args.follow_symlinks
        )
    except LoadError as err:
        print(f"bqx load: {printable(str(err))}", file=sys.stderr)
        return LOAD_EXIT_FATAL
    except psycopg.Error as err:
        message = err.diag.message_primary if err.diag.message_primary else str(err)
        print(f"bqx load: database error: {printable(' '.join(message.split()))}", file=sys.stderr)
        return LOAD_EXIT_FATAL
    print(format_summary(summary))
    for skipped in summary.skipped:
        print(f"bqx load: skipped {printable(skipped.file)}: {printable(skipped.reason)}", file=sys.stderr)
    return LOAD_EXIT_FILES_SKIPPED if summary.skipped else LOAD_EXIT_OK


def cmd_build(args: argparse.Namespace) -> int:
    dsn = _ensure_server()
    return run_dbt(["build", "--select", "tag:wave1", *args.dbt_args], dsn).returncode


def cmd_dbt(args: argparse.Namespace) -> int:
    dsn = _ensure_server()
    return run_dbt(args.dbt_args, dsn).returncode


def cmd_lint(args: argparse.Namespace) -> int:
    """sqlfluff with the dbt templater, which compiles against the configured server."""
    import subprocess

    from bqx.dbt import dbt_env

    dsn = _ensure_server()
    sqlfluff = Path(sys.executable).with_name("sqlfluff")
    paths = args.paths or [f for f in ("models", "analyses", "tests") if (PROJECT_DIR / f).is_dir()]
    return subprocess.run([str(sqlfluff), "lint", *paths], cwd=PROJECT_DIR, env=dbt_env(dsn), check=False).returncode


def cmd_status(args: argparse.Namespace) -> int:
    from bqx.status import coverage, format_coverage

    print(format_coverage(coverage(_ensure_server())))
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    from bqx.datasets.pipeline import run_command

    return run_command(args, "bqx datasets")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bqx", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    db = sub.add_parser("db", help="the embedded PostgreSQL server (or BQX_PG_DSN's)")
    db.add_argument("action", choices=["start", "stop", "status", "url"])
    db.set_defaults(func=cmd_db)

    gen = sub.add_parser("generate", help="deterministic synthetic M1 bars for the 28 pairs")
    gen.add_argument("--start", required=True, help="first day, YYYY-MM-DD (UTC)")
    gen.add_argument("--end", required=True, help="day after the last, YYYY-MM-DD (UTC)")
    gen.add_argument("--pairs", nargs="+", default=None, help="subset of pairs (default: all 28)")
    gen.add_argument("--format", default="csv", choices=FORMATS)
    gen.add_argument("--seed", type=int, default=20240701)
    gen.add_argument("--out", required=True, help="output folder")
    gen.set_defaults(func=cmd_generate)

    load = sub.add_parser(
        "load",
        help="load bar files into raw.m1_bars",
        description="Load files of 1-minute bars (csv, histdata, parquet; folders searched recursively)\n"
        "into raw.m1_bars. Each file loads in its own transaction. A row that breaks a rule goes to\n"
        "raw.m1_rejects with the reason; a file that cannot be loaded is named on stderr and skipped.\n"
        "Symbolic links are not followed unless --follow-symlinks.",
        epilog=LOAD_EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    load.add_argument("paths", nargs="+", help="files or folders")
    load.add_argument("--pair", default=None, help="pair of histdata files whose name does not say it")
    load.add_argument("--format", default=None, choices=FORMATS)
    load.add_argument(
        "--min-price", type=float, default=PRICE_MIN, help=f"lowest plausible price (default {PRICE_MIN:g})"
    )
    load.add_argument(
        "--max-price", type=float, default=PRICE_MAX, help=f"highest plausible price (default {PRICE_MAX:g})"
    )
    load.add_argument(
        "--future-minutes",
        type=float,
        default=5.0,
        help="how far after the load's start a bar may be (default 5): a bar cannot come from the future",
    )
    load.add_argument(
        "--follow-symlinks",
        action="store_true",
        help="load what symbolic links point to (by default a link is named and skipped, never opened)",
    )
    load.set_defaults(func=cmd_load)

    build = sub.add_parser("build", help="dbt build --select tag:wave1 [extra dbt arguments]")
    build.add_argument("dbt_args", nargs=argparse.REMAINDER)
    build.set_defaults(func=cmd_build)

    dbt = sub.add_parser("dbt", help="any dbt command against the configured server")
    dbt.add_argument("dbt_args", nargs=argparse.REMAINDER)
    dbt.set_defaults(func=cmd_dbt)

    lint = sub.add_parser("lint", help="sqlfluff lint (dbt templater) against the configured server")
    lint.add_argument("paths", nargs="*", help="default: models analyses tests")
    lint.set_defaults(func=cmd_lint)

    status = sub.add_parser("status", help="rows per pair × month for the source and every model")
    status.set_defaults(func=cmd_status)

    from bqx.datasets.options import add_arguments

    datasets = sub.add_parser("datasets", help="train/val/test datasets, feature selection, baseline models and report")
    add_arguments(datasets)
    datasets.set_defaults(func=cmd_datasets)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (server.ServerError, ValueError, FileNotFoundError) as err:
        # bad input or an unusable server: the message says what to do, a traceback would not
        print(f"bqx: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
