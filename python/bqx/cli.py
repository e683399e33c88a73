"""`bqx`: the command line of the feature store. Each subcommand wires one module's functions."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bqx import server
from bqx.dbt import PROJECT_DIR, run_dbt
from bqx.writer_lock import WriterBusy


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


def cmd_load(args: argparse.Namespace) -> int:
    from bqx.load import format_summary, load_paths
    from bqx.writer_lock import writer_lock

    dsn = _ensure_server()
    # [operations] one writer at a time: the load holds the writer lock for its whole run
    with writer_lock(dsn, "load", wait=not args.no_wait):
        summary = load_paths(dsn, [Path(p) for p in args.paths], fmt=args.format, pair=args.pair)
    print(format_summary(summary))
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from bqx.build import BuildOptions, run_build

    dsn = _ensure_server()
    options = BuildOptions(
        # `bqx build -- --exclude ...`: what follows `--` goes to dbt as is
        dbt_args=args.dbt_args[1:] if args.dbt_args[:1] == ["--"] else args.dbt_args,
        recompute_from=args.recompute_from,
        recompute_to=args.recompute_to,
        full_tests=args.full_tests,
        wait=not args.no_wait,
        audit_sample=args.audit_sample,
    )
    return run_build(dsn, options)


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
    from bqx.status import format_status, status

    data = status(_ensure_server())
    print(json.dumps(data, indent=2, default=str) if args.json else format_status(data))
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from bqx.audit import format_report, run_audit
    from bqx.writer_lock import writer_lock

    dsn = _ensure_server()
    # no load or build while auditing: the stored rows and their input must not move meanwhile
    with writer_lock(dsn, "audit", wait=not args.no_wait):
        report = run_audit(
            dsn, sample=args.sample, full=args.full, seed=args.seed, changed_limit=args.changed_limit,
            progress=sys.stderr.isatty(),
        )
    print(json.dumps(report.as_dict(), indent=2, default=str) if args.json else format_report(report))
    return 0 if report.passed else 1


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
    gen.add_argument("--format", default="csv", choices=["csv", "parquet", "histdata"])
    gen.add_argument("--seed", type=int, default=20240701)
    gen.add_argument("--out", required=True, help="output folder")
    gen.set_defaults(func=cmd_generate)

    load = sub.add_parser("load", help="load bar files into raw.m1_bars")
    load.add_argument("paths", nargs="+", help="files or folders")
    load.add_argument("--pair", default=None, help="pair of histdata files whose name does not say it")
    load.add_argument("--format", default=None, choices=["csv", "histdata", "parquet"])
    load.add_argument("--no-wait", action="store_true", help="fail at once if a build or load is running")
    load.set_defaults(func=cmd_load)

    build = sub.add_parser("build", help="dbt build --select tag:wave1 [extra dbt arguments]")
    build.add_argument("--from", dest="recompute_from", default=None, metavar="TIME",
                       help="backfill: also recompute bars at or after TIME (UTC), e.g. 2024-08-01")
    build.add_argument("--to", dest="recompute_to", default=None, metavar="TIME",
                       help="backfill: ... and before TIME (default: to the end)")
    build.add_argument("--full-tests", action="store_true",
                       help="data tests read every row (default on incremental runs: the rows written)")
    build.add_argument("--no-wait", action="store_true", help="fail at once if a build or load is running")
    build.add_argument("--audit-sample", type=int, default=1, metavar="N",
                       help="the audit after an incremental build: N random minutes per pair and model (0: no audit)")
    build.add_argument("dbt_args", nargs=argparse.REMAINDER)
    build.set_defaults(func=cmd_build)

    dbt = sub.add_parser("dbt", help="any dbt command against the configured server")
    dbt.add_argument("dbt_args", nargs=argparse.REMAINDER)
    dbt.set_defaults(func=cmd_dbt)

    lint = sub.add_parser("lint", help="sqlfluff lint (dbt templater) against the configured server")
    lint.add_argument("paths", nargs="*", help="default: models analyses tests")
    lint.set_defaults(func=cmd_lint)

    audit = sub.add_parser("audit", help="recompute a sample of stored rows and compare them")
    audit.add_argument("--sample", type=int, default=3, help="random minutes per pair and model (default 3)")
    audit.add_argument("--full", action="store_true", help="recompute and compare every row")
    audit.add_argument("--seed", type=int, default=None, help="the sample's seed (default: a new one, printed)")
    audit.add_argument("--changed-limit", type=int, default=1440,
                       help="bars checked at each end of a pair's changed range (default 1440)")
    audit.add_argument("--json", action="store_true", help="the report as JSON")
    audit.add_argument("--no-wait", action="store_true", help="fail at once if a build or load is running")
    audit.set_defaults(func=cmd_audit)

    status = sub.add_parser("status", help="every model against the source, the build in progress, the last build and audit")
    status.add_argument("--json", action="store_true", help="the same as JSON, for machines")
    status.set_defaults(func=cmd_status)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (server.ServerError, ValueError, FileNotFoundError, WriterBusy) as err:
        # bad input or an unusable server: the message says what to do, a traceback would not
        print(f"bqx: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
