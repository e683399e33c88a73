"""`bqx`: the command line of the feature store. Each subcommand wires one module's functions."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from bqx import server
from bqx.bar_formats import FORMATS
from bqx.build_arguments import build_arguments
from bqx.project import PROJECT_DIR, external_dsn
from bqx.raw_schema import PRICE_MAX, PRICE_MIN
from bqx.safe_files import UnsafePathError
from bqx.writer_lock import WriterBusy

# Commands whose arguments go to another program untouched (dbt, sqlfluff): argparse would
# take `--full-refresh` or `-s` for its own options, so main() hands them over before it parses.
PASS_THROUGH = ("build", "dbt", "lint")
LINT_PATHS = ("models", "analyses", "tests")
# `bqx build`'s own options, taken out before the rest goes to dbt (dbt has none of these names):
# option -> (destination, takes a value)
BUILD_OPTIONS = {
    "--from": ("recompute_from", True),
    "--to": ("recompute_to", True),
    "--full-tests": ("full_tests", False),
    "--no-wait": ("no_wait", False),
    "--audit-sample": ("audit_sample", True),
}
BUILD_HELP = """bqx build: `dbt build --select tag:wave1` under the writer lock, then a summary and a small audit.
bqx's own options (every other option goes to dbt, whose help follows):
  --from TIME         backfill: also recompute the bars at or after TIME (UTC), e.g. 2024-08-01
  --to TIME           ... and before TIME (default: to the end)
  --full-tests        data tests read every row (default on an incremental run: the rows it wrote)
  --no-wait           fail at once if a build or load holds the writer lock
  --audit-sample N    the audit after an incremental build: the minutes changed since the last
                      audit and N seeded minutes per pair and model among the rows it wrote
                      (default 1; 0: no audit)
"""


def cmd_db(args: argparse.Namespace) -> int:
    if args.action == "url":
        print(server.configured_dsn(PROJECT_DIR))
        return 0
    if args.action == "status":
        print(json.dumps(server.server_status(PROJECT_DIR), indent=2))
        return 0
    if args.action == "distribute":
        import psycopg

        from bqx.distribute import distribute

        with psycopg.connect(server.configured_dsn(PROJECT_DIR)) as conn:
            for line in distribute(conn):
                print(line)
        return 0
    if external_dsn():
        print(f"BQX_PG_DSN is set: using that server, nothing to {args.action}")
        return 0
    cluster = server.cluster_for(PROJECT_DIR)
    if args.action == "start":
        dsn = server.start(cluster)
        print(f"PostgreSQL running: {dsn} (data in {cluster.pgdata})")
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
EXIT_INTERNAL_ERROR = 4  # a bug of bqx, not of the input: every command, one line on stderr
LOAD_EXIT_CODES = f"""exit status:
  {LOAD_EXIT_OK}  every file loaded (rows that break a rule are rejected, counted and kept in
     raw.m1_rejects: that is normal)
  {LOAD_EXIT_FILES_SKIPPED}  some files or paths were not loaded (each is named on stderr with the reason);
     all the others loaded
  {LOAD_EXIT_FATAL}  a fatal error (a bad option, the database unreachable or failing): the load stopped
  {EXIT_INTERNAL_ERROR}  an internal error of bqx (please report it; BQX_TRACEBACK=1 shows the traceback)
"""


def cmd_load(args: argparse.Namespace) -> int:
    """`bqx load`: one line on stderr per problem, never a traceback; the exit codes above."""
    import psycopg

    from bqx.load import LoadError, PlausibleRanges, format_summary, load_paths, printable

    try:
        ranges = PlausibleRanges(
            min_price=args.min_price, max_price=args.max_price, future_minutes=args.future_minutes
        )
        dsn = server.ensure_server(PROJECT_DIR)
        from bqx.writer_lock import writer_lock

        # one writer at a time: the load holds the writer lock for its whole run
        with writer_lock(dsn, "load", wait=not args.no_wait):
            summary = load_paths(
                dsn, args.paths, fmt=args.format, pair=args.pair, ranges=ranges, follow_symlinks=args.follow_symlinks
            )
    except (LoadError, WriterBusy) as err:
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


def split_build_options(extra: list[str]) -> tuple[dict[str, object], list[str]]:
    """`bqx build`'s own options (BUILD_OPTIONS, as `--opt V` or `--opt=V`) and the rest, for dbt."""
    own: dict[str, object] = {}
    rest: list[str] = []
    position = 0
    while position < len(extra):
        arg = extra[position]
        name, equals, value = arg.partition("=")
        if name in BUILD_OPTIONS:
            destination, takes_value = BUILD_OPTIONS[name]
            if not takes_value:
                if equals:
                    raise ValueError(f"bqx build: {name} takes no value")
                own[destination] = True
            elif equals:
                own[destination] = value
            elif position + 1 < len(extra):
                position += 1
                own[destination] = extra[position]
            else:
                raise ValueError(f"bqx build: {name} needs a value")
        else:
            rest.append(arg)
        position += 1
    if "audit_sample" in own:
        try:
            own["audit_sample"] = int(str(own["audit_sample"]))
        except ValueError:
            raise ValueError(f"bqx build: --audit-sample needs a number, got {own['audit_sample']!r}") from None
    return own, rest


def cmd_build(args: argparse.Namespace) -> int:
    from bqx.build import BuildOptions, run_build
    from bqx.dbt import run_dbt

    own, dbt_args = split_build_options(args.extra)
    if "--help" in dbt_args or "-h" in dbt_args:
        print(BUILD_HELP, flush=True)
        return run_dbt(build_arguments(dbt_args), server.configured_dsn(PROJECT_DIR)).returncode
    options = BuildOptions(
        dbt_args=dbt_args,
        recompute_from=own.get("recompute_from"),  # type: ignore[arg-type]
        recompute_to=own.get("recompute_to"),  # type: ignore[arg-type]
        full_tests=bool(own.get("full_tests", False)),
        wait=not own.get("no_wait", False),
        audit_sample=int(own.get("audit_sample", 1)),  # type: ignore[arg-type]
    )
    return run_build(server.ensure_server(PROJECT_DIR), options)


def cmd_dbt(args: argparse.Namespace) -> int:
    from bqx.dbt import run_dbt

    if not args.extra:
        raise ValueError("bqx dbt needs a dbt command, e.g. `bqx dbt test` or `bqx dbt ls -s bqx`")
    return run_dbt(args.extra, server.ensure_server(PROJECT_DIR)).returncode


def lint_arguments(extra: list[str], project_dir: Path = PROJECT_DIR) -> list[str]:
    """sqlfluff's arguments for `bqx lint EXTRA`: the project's SQL folders unless EXTRA names paths."""
    names_paths = any(not arg.startswith("-") and (project_dir / arg).exists() for arg in extra)
    defaults = [] if names_paths else [folder for folder in LINT_PATHS if (project_dir / folder).is_dir()]
    return ["lint", *extra, *defaults]


def cmd_lint(args: argparse.Namespace) -> int:
    """sqlfluff with the dbt templater, which compiles against the configured server."""
    import subprocess

    from bqx.dbt import check_output_folder, dbt_env

    env = dbt_env(server.ensure_server(PROJECT_DIR))
    check_output_folder(PROJECT_DIR / "target")
    sqlfluff = Path(sys.executable).with_name("sqlfluff")
    return subprocess.run([str(sqlfluff), *lint_arguments(args.extra)], cwd=PROJECT_DIR, env=env, check=False).returncode


def cmd_docs(args: argparse.Namespace) -> int:
    """The models' YAML from the registry and the vars: write it, or with --check say what differs."""
    from bqx.docs import stale_files, write_files

    if args.check:
        stale = stale_files(PROJECT_DIR)
        for path in stale:
            print(f"{path}: differs from what `bqx docs generate-yaml` writes")
        return 1 if stale else 0
    for path in write_files(PROJECT_DIR):
        print(f"wrote {path}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from bqx.status import format_status, status

    data = status(server.ensure_server(PROJECT_DIR))
    print(json.dumps(data, indent=2, default=str) if args.json else format_status(data))
    return 0


def cmd_features(args: argparse.Namespace) -> int:
    """`bqx features`: point-in-time retrieval of the features known at each event of a file."""
    from bqx.features import AsOfOptions, RetrievalError, parse_duration, write_as_of

    try:
        options = AsOfOptions(
            columns=tuple(args.columns) if args.columns else None,
            max_age=parse_duration(args.max_age),
            method=args.method,
            chunk_rows=args.chunk_rows,
        )
        summary = write_as_of(Path(args.events), Path(args.out), options, dsn=server.ensure_server(PROJECT_DIR))
    except RetrievalError as err:
        print(f"bqx features: {_one_line(err)}", file=sys.stderr)
        return 2
    print(f"{args.out}: {summary.describe()}")
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    from bqx.datasets.pipeline import run_command

    return run_command(args, "bqx datasets")


def cmd_audit(args: argparse.Namespace) -> int:
    from bqx.audit import format_report, run_audit
    from bqx.writer_lock import writer_lock

    dsn = server.ensure_server(PROJECT_DIR)
    # no load or build while auditing: the stored rows and their input must not move meanwhile
    with writer_lock(dsn, "audit", wait=not args.no_wait):
        report = run_audit(
            dsn, sample=args.sample, full=args.full, seed=args.seed, changed_limit=args.changed_limit,
            progress=sys.stderr.isatty(),
        )
    print(json.dumps(report.as_dict(), indent=2, default=str) if args.json else format_report(report))
    return 0 if report.passed else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bqx", description=__doc__, allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True)

    db = sub.add_parser(
        "db",
        help="the embedded PostgreSQL server (or BQX_PG_DSN's); `distribute`: on a Citus server, "
        "distribute the source by pair (docs/scale-out.md)",
    )
    db.add_argument("action", choices=["start", "stop", "status", "url", "distribute"])
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
    load.add_argument("--no-wait", action="store_true", help="fail at once if a build or load holds the writer lock")
    load.set_defaults(func=cmd_load)

    build = sub.add_parser(
        "build", add_help=False,
        help="dbt build --select tag:wave1 under the writer lock [--from T] [--to T] [--full-tests] [--no-wait] "
        "[--audit-sample N] [any dbt build option: --full-refresh, --vars, -s, --exclude, --threads]",
    )
    build.set_defaults(func=cmd_build)

    dbt = sub.add_parser("dbt", add_help=False, help="any dbt command against the configured server")
    dbt.set_defaults(func=cmd_dbt)

    lint = sub.add_parser(
        "lint", add_help=False,
        help="sqlfluff lint (dbt templater) against the configured server [any sqlfluff lint option or path]",
    )
    lint.set_defaults(func=cmd_lint)

    docs = sub.add_parser("docs", help="documentation generated from the feature registry")
    docs_sub = docs.add_subparsers(dest="docs_command", required=True)
    generate_yaml = docs_sub.add_parser(
        "generate-yaml", help="write the feature models', feature_matrix's and targets' YAML from the registry"
    )
    generate_yaml.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file differs")
    generate_yaml.set_defaults(func=cmd_docs)

    audit = sub.add_parser("audit", help="recompute changed and sampled rows of every model and compare them")
    audit.add_argument("--sample", type=int, default=3, help="random minutes per pair and model (default 3)")
    audit.add_argument("--full", action="store_true", help="recompute and compare every row")
    audit.add_argument("--seed", type=int, default=None, help="the sample's seed (default: a new one, printed)")
    audit.add_argument("--changed-limit", type=int, default=1440,
                       help="bars checked at each end of a pair's changed range (default 1440)")
    audit.add_argument("--json", action="store_true", help="the report as JSON")
    audit.add_argument("--no-wait", action="store_true", help="fail at once if a build or load holds the writer lock")
    audit.set_defaults(func=cmd_audit)

    status = sub.add_parser(
        "status", help="every model against the source, the build in progress, the last build and audit"
    )
    status.add_argument("--json", action="store_true", help="the same as JSON, for machines")
    status.set_defaults(func=cmd_status)

    from bqx.features import CHUNK_VALUES, DEFAULT_MAX_AGE, MAX_CHUNK_ROWS, METHODS, MIRROR_MIN_EVENTS

    features = sub.add_parser(
        "features",
        help="the features known at each event of a file (point in time)",
        description="Point-in-time retrieval: for each event (pair, event_time) of --events, the features of\n"
        "the pair's last bar closed at or before event_time (a bar opening at t closes at t + 1 minute),\n"
        "NULL with a reason when that bar is older than --max-age. Every column of the events is kept,\n"
        "in the file's order. event_time must carry a time zone.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    features.add_argument("--events", required=True, help="Parquet (or CSV) file with columns pair and event_time")
    features.add_argument("--out", required=True, help="Parquet file to write (appears only when complete)")
    features.add_argument(
        "--columns", nargs="+", default=None, help="feature_matrix columns to return (default: every feature)"
    )
    features.add_argument(
        "--max-age",
        default=f"{int(DEFAULT_MAX_AGE.total_seconds() // 60)}min",
        help="oldest bar still served, e.g. 90s, 5min, 2h (default %(default)s; inclusive)",
    )
    features.add_argument(
        "--method",
        default="auto",
        choices=METHODS,
        help="how events find their bar: index (SQL, index probes), window (SQL, a merge per pair), mirror (a columnar "
        "copy of the chosen columns in .bqx/cache/mirror, checked against the build state and read again where stale), "
        f"auto (default: mirror from {MIRROR_MIN_EVENTS:,} events on one server, index below; window on Citus; "
        "measured in bench/bench_retrieval.py)",
    )
    features.add_argument(
        "--chunk-rows",
        type=int,
        default=None,
        help=f"events per round trip (default: {CHUNK_VALUES:,} values' worth for the columns asked for, at most {MAX_CHUNK_ROWS:,})",
    )
    features.set_defaults(func=cmd_features)

    from bqx.datasets.options import add_arguments

    datasets = sub.add_parser("datasets", help="train/val/test datasets, feature selection, baseline models and report")
    add_arguments(datasets)
    datasets.set_defaults(func=cmd_datasets)
    return parser


def parse(argv: list[str]) -> argparse.Namespace:
    """The command and its arguments; a pass-through command's arguments are not parsed."""
    parser = build_parser()
    if argv and argv[0] in PASS_THROUGH:
        args = parser.parse_args(argv[:1])
        args.extra = list(argv[1:])
        return args
    args = parser.parse_args(argv)
    args.extra = []
    return args


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def main(argv: list[str] | None = None) -> int:
    args = parse(list(sys.argv[1:] if argv is None else argv))
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("bqx: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - every error reaches the user as one line
        import psycopg

        known = (server.ServerError, UnsafePathError, ValueError, OSError, psycopg.Error, WriterBusy)
        if not isinstance(err, known):
            if os.environ.get("BQX_TRACEBACK"):
                raise
            print(f"bqx: internal error ({type(err).__name__}): {_one_line(err)} "
                  "(set BQX_TRACEBACK=1 for the traceback)", file=sys.stderr)
            return EXIT_INTERNAL_ERROR
        # bad input or an unusable server: the message says what to do, a traceback would not
        print(f"bqx: {_one_line(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
