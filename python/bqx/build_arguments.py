"""dbt's arguments for `bqx build`: the wave-1 selection unless the user's options select."""

from __future__ import annotations

BUILD_SELECTION = ["--select", "tag:wave1"]
# dbt options that choose the nodes themselves: given one, `bqx build` adds no selection
SELECTION_OPTIONS = ("-s", "--select", "-m", "--models", "--model", "--selector", "--resource-type", "--resource-types")


def build_arguments(extra: list[str]) -> list[str]:
    """dbt's arguments for `bqx build EXTRA`: the wave-1 selection unless EXTRA selects."""
    selects = any(arg in SELECTION_OPTIONS or arg.split("=", 1)[0] in SELECTION_OPTIONS for arg in extra)
    return ["build", *([] if selects else BUILD_SELECTION), *extra]
