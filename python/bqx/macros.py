"""The project's dbt macros, evaluated in-process: the feature catalog and the generated YAML
read the registry (`feature_families()`) and the column specs without starting dbt.

dbt itself needs ~5-15 s to parse the project before it can run a macro (`dbt run-operation`);
the macros read here only use `var()`, `return()` and each other, so they are rendered with
dbt's own Jinja environment (its parser, filters and `{% test %}`/`{% materialization %}` tags)
and a small context: `var` (dbt_project.yml's vars with the caller's overrides, as
`--vars` gives them), `return`, `exceptions.raise_compiler_error` and `execute = False`, as
when dbt parses. python/tests/test_catalog.py checks the result against dbt's own evaluation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

from bqx.project import PROJECT_DIR, dbt_vars, state_dir

MACRO_PREFIX = "dbt_macro__"


class MacroError(ValueError):
    """A macro raised (exceptions.raise_compiler_error), or asked for a var nobody set."""


@cache
def _environment(macros_dir: Path, cache_dir: Path) -> Any:
    """dbt's Jinja environment reading macros_dir; compiled templates are cached on disk (keyed by
    their source's checksum: compiling every macro file costs ~1.5 s, loading them ~0.02 s)."""
    import jinja2
    from dbt_common.clients.jinja import get_environment

    environment = get_environment()
    environment.loader = jinja2.FileSystemLoader(str(macros_dir))
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        environment.bytecode_cache = jinja2.FileSystemBytecodeCache(str(cache_dir))
    except OSError:  # a read-only checkout: compile every time
        pass
    return environment


def _macro_files(project_dir: Path) -> list[str]:
    macros_dir = project_dir / "macros"
    return sorted(path.relative_to(macros_dir).as_posix() for path in macros_dir.rglob("*.sql"))


class _Exceptions:
    @staticmethod
    def raise_compiler_error(message: str) -> None:
        raise MacroError(str(message))

    @staticmethod
    def warn(message: str) -> None:  # dbt logs it; nothing to do here
        return None


def macro_context(project_dir: Path = PROJECT_DIR, vars: Mapping[str, Any] | None = None) -> dict[str, Callable]:
    """Every macro of the project's macros/ folder, callable from Python, under these vars."""
    from dbt_common.clients.jinja import MacroReturn

    merged = dbt_vars(project_dir) | dict(vars or {})
    missing = object()

    def var(name: str, default: Any = missing) -> Any:
        if name in merged:
            return merged[name]
        if default is missing:
            raise MacroError(f"Required var '{name}' not found in dbt_project.yml's vars or the overrides")
        return default

    def return_(value: Any) -> None:
        raise MacroReturn(value)

    context: dict[str, Any] = {
        "var": var,
        "return": return_,
        "exceptions": _Exceptions(),
        "execute": False,
        "log": lambda *args, **kwargs: "",
    }

    def callable_macro(macro: Callable) -> Callable:
        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return macro(*args, **kwargs)
            except MacroReturn as returned:
                return returned.value

        return call

    environment = _environment(project_dir / "macros", state_dir(project_dir) / "jinja_cache")
    for file_name in _macro_files(project_dir):
        module = environment.get_template(file_name).make_module(vars=context)
        for attribute in dir(module):
            if attribute.startswith(MACRO_PREFIX):
                context[attribute[len(MACRO_PREFIX) :]] = callable_macro(getattr(module, attribute))
    return context


def call_macro(
    name: str, *args: Any, project_dir: Path = PROJECT_DIR, vars: Mapping[str, Any] | None = None, **kwargs: Any
) -> Any:
    """`{{ name(*args, **kwargs) }}` as dbt would evaluate it under these vars (when parsing)."""
    context = macro_context(project_dir, vars)
    if name not in context:
        raise MacroError(f"no macro named {name!r} in {project_dir / 'macros'}")
    return context[name](*args, **kwargs)
