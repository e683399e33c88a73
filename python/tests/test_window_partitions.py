"""Every window function of the wave-1 models and of the point-in-time retrieval is partitioned by
`pair`: the condition for Citus (distributed by pair, docs/scale-out.md) to run it on the shard
that holds the pair, one task per shard, instead of pulling rows to the coordinator. Read from
the SQL dbt compiled for the session's wave-1 build (no Citus needed)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from bqx.features import AsOfOptions, as_of_sql

IDENTIFIER = r"[a-z_][a-z0-9_$]*"
FRAME_WORDS = {"partition", "order", "rows", "range", "groups"}


def strip_literals(sql: str) -> str:
    """The SQL lowercased with comments removed and string literals (quoted, dollar-quoted)
    blanked, so that a word inside them is never read as a window."""
    out: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        if sql.startswith("--", i):
            i = sql.find("\n", i) if "\n" in sql[i:] else n
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            i = n if end < 0 else end + 2
        elif sql[i] == "'":
            j = i + 1
            while j < n:
                if sql[j] == "'" and sql.startswith("''", j):
                    j += 2
                elif sql[j] == "'":
                    break
                else:
                    j += 1
            out.append("''")
            i = j + 1
        elif sql[i] == "$" and (tag := re.match(r"\$([a-z_0-9]*)\$", sql[i:], re.I)):
            end = sql.find(tag.group(0), i + len(tag.group(0)))
            out.append("''")
            i = n if end < 0 else end + len(tag.group(0))
        else:
            out.append(sql[i])
            i += 1
    return "".join(out).lower()


def balanced(text: str, start: int) -> tuple[str, int]:
    """The text inside the parenthesis opening at `start`, and the index after its close."""
    depth = 0
    for i in range(start, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return text[start + 1 : i].strip(), i + 1
    raise ValueError(f"unbalanced parenthesis at {start}: {text[start:start + 80]!r}")


def top_level_split(text: str) -> list[str]:
    parts, depth, current = [], 0, []
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    parts.append("".join(current).strip())
    return parts


@dataclass(frozen=True)
class Window:
    spec: str  # the inline spec, or a window's name
    named: bool


def windows_of(sql: str) -> tuple[list[Window], dict[str, list[str]]]:
    """The windows used by `over` in a statement, and the named windows it defines."""
    text = strip_literals(sql)
    definitions: dict[str, list[str]] = {}
    for match in re.finditer(r"\bwindow\s+", text):
        position = match.end()
        while definition := re.compile(rf"({IDENTIFIER})\s+as\s*\(").match(text, position):
            body, position = balanced(text, definition.end() - 1)
            definitions.setdefault(definition.group(1), []).append(body)
            comma = re.compile(r"\s*,\s*").match(text, position)
            if not comma:
                break
            position = comma.end()
    used: list[Window] = []
    for match in re.finditer(rf"\bover\b\s*(\(|{IDENTIFIER})", text):
        if match.group(1) == "(":
            body, _ = balanced(text, match.start(1))
            used.append(Window(body, named=False))
        else:
            used.append(Window(match.group(1), named=True))
    return used, definitions


def partitioned_by_pair(spec: str, definitions: dict[str, list[str]], seen: frozenset[str] = frozenset()) -> bool:
    """Whether a window spec (`partition by ... order by ...`, possibly starting with the name of
    a window it extends) partitions by the column `pair` (alone or with others)."""
    base = re.match(rf"({IDENTIFIER})\b", spec)
    if base and base.group(1) not in FRAME_WORDS:
        return named_partitioned_by_pair(base.group(1), definitions, seen)
    partition = re.match(r"partition\s+by\s+(.*?)(?=\border\s+by\b|\brows\b|\brange\b|\bgroups\b|$)", spec, re.S)
    if not partition:
        return False
    keys = top_level_split(partition.group(1))
    return any(re.fullmatch(rf"({IDENTIFIER}\.)?pair", key.strip()) for key in keys)


def named_partitioned_by_pair(name: str, definitions: dict[str, list[str]], seen: frozenset[str] = frozenset()) -> bool:
    # a name defined several times (one per CTE) must be partitioned by pair in each definition
    bodies = definitions.get(name)
    if not bodies or name in seen:
        return False
    return all(partitioned_by_pair(body, definitions, seen | {name}) for body in bodies)


def unpartitioned_windows(sql: str) -> tuple[int, list[str]]:
    """The number of windows a statement uses and those not partitioned by pair."""
    used, definitions = windows_of(sql)
    bad = [
        window.spec
        for window in used
        if not (
            named_partitioned_by_pair(window.spec, definitions)
            if window.named
            else partitioned_by_pair(window.spec, definitions)
        )
    ]
    # a named window defined but used by nothing of this check still counts (`window x as (...)`)
    bad += [f"window {name} as ({body})" for name, bodies in definitions.items() for body in bodies
            if not partitioned_by_pair(body, definitions, frozenset({name}))]
    return len(used), bad


def compiled_models(target: Path) -> dict[str, str]:
    """Each model's compiled SQL in a dbt target folder (data tests left out)."""
    folder = target / "compiled" / "bqx_feature_store" / "models"
    return {
        path.stem: path.read_text()
        for path in sorted(folder.rglob("*.sql"))
        if not any(part.endswith(".yml") for part in path.relative_to(folder).parts)
    }


def test_the_parser_tells_a_pair_window_from_others() -> None:
    sql = """
    select sum(x) over (partition by t.pair order by ts_utc), -- over (order by ts_utc) in a comment
        lag(x) over w, avg(x) over (w rows 5 preceding), 'over (order by x)' as text_literal,
        rank() over (partition by t.pair, block order by ts_utc), count(*) over ()
    from t window w as (partition by pair order by ts_utc)
    """
    used, bad = unpartitioned_windows(sql)
    assert used == 5 and bad == [""]  # `over ()`: the whole table
    assert unpartitioned_windows("select lag(x) over w from t window w as (order by ts_utc)")[1] != []
    assert unpartitioned_windows("select lag(x) over (partition by pairs order by ts_utc) from t")[1] != []
    assert unpartitioned_windows("select lag(x) over undefined_name from t")[1] == ["undefined_name"]
    assert unpartitioned_windows("select f(x) over (partition by date_trunc('day', ts_utc)) from t")[1] != []


def test_every_window_of_the_wave1_models_and_the_retrieval_is_partitioned_by_pair(
    wave1_build: tuple[str, Path],
) -> None:
    dsn, target = wave1_build
    statements = compiled_models(target)
    assert {"m1_index", "bqx", "reg_rate", "technical_bqx", "targets", "feature_matrix"} <= set(statements)
    for method in ("window", "index"):
        statements[f"features_as_of (method={method})"] = as_of_sql(dsn, AsOfOptions(), method)
    total = 0
    problems = []
    for name, sql in statements.items():
        used, bad = unpartitioned_windows(sql)
        total += used
        problems += [f"{name}: window not partitioned by pair: ({spec[:200]})" for spec in bad]
    assert not problems, "\n".join(problems)
    assert total > 100, f"only {total} windows found: the compiled SQL was not read"
