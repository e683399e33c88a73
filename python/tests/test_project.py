"""One home per fact: the lists the dbt project and the Python package both need agree."""

from __future__ import annotations

from bqx.pairs import PAIRS
from bqx.project import dbt_vars
from conftest import query_frame


def test_the_28_pairs_of_dbt_and_python_are_one_list() -> None:
    """dbt_project.yml's var `pairs` (the models' filter) equals bqx.pairs.PAIRS (the loader's
    and the generator's), in the same order of precedence."""
    assert dbt_vars()["pairs"] == list(PAIRS)


def test_every_table_keyed_by_pair_and_minute_has_its_unique_index(wave1_dsn: str) -> None:
    """dbt_project.yml's +indexes (once, for m1_index, the feature models and targets): each such
    table carries a unique index on exactly (pair, ts_utc)."""
    frame = query_frame(
        wave1_dsn,
        """
        select tables.table_schema || '.' || tables.table_name as name,
            exists (
                select 1
                from pg_catalog.pg_index as index_
                where index_.indrelid = (quote_ident(tables.table_schema) || '.' || quote_ident(tables.table_name))::regclass
                    and index_.indisunique
                    and (
                        select array_agg(attribute.attname::text order by keys.position)
                        from unnest(index_.indkey) with ordinality as keys (attnum, position)
                        inner join pg_catalog.pg_attribute as attribute
                            on attribute.attrelid = index_.indrelid and attribute.attnum = keys.attnum
                    ) = array['pair', 'ts_utc']
            ) as indexed
        from information_schema.tables as tables
        where tables.table_schema in ('staging', 'features', 'marts') and tables.table_type = 'BASE TABLE'
            and tables.table_name <> 'baseline_rates'
        """,
    )
    assert {"staging.m1_index", "features.bqx", "marts.targets"} <= set(frame["name"])
    assert frame["indexed"].all(), frame[~frame["indexed"]]
