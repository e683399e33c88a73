{#-
    Data tests on an incremental build check the rows it wrote: every generic test reads its
    model through get_where_subquery (dbt's hook for the `where` config), so when the model was
    built incrementally in this very invocation, the test reads only the (pair, minute) ranges
    that build rewrote (build_state.model_pairs; a join on pair and an index range on
    (pair, ts_utc), never a scan). The rest was checked by the build that wrote it; the unique
    index on (pair, ts_utc) guards uniqueness across builds. Everything is checked on a full
    build (--full-refresh, a first build), on a plain `dbt test`, and on demand with
    `--vars '{"full_tests": true}'` (`bqx build --full-tests`). The subquery keeps the model's
    name as its alias, so a test's expressions may qualify columns with it.
    The view stg_m1_bars (the source bars, typed), whose tests run before m1_index is built, is
    tested on the bars m1_index is about to read: per pair, the hull of the changes it has not
    consumed (all of a pair it never built). A full scan of the source on every build cost 2.9 s
    at 28 pairs x 1 month, growing with the history; the source's primary key guards the rest.
-#}
{% macro default__get_where_subquery(relation) -%}
    {%- set where = config.get('where', '') -%}
    {%- set written = written_rows_of(relation) -%}
    {%- set pending = pending_source_rows_of(relation) -%}
    {%- if pending -%}
        {%- set filtered -%}
            (
                select tested_rows.*
                from {{ relation }} as tested_rows
                inner join (
                    -- one row per pair: the hull of its changes m1_index has not consumed
                    select
                        state.pair,
                        min(changes.first_ts) as from_ts,
                        max(changes.last_ts) as to_ts
                    from build_state.model_pairs as state
                    inner join raw.m1_changes as changes
                        on changes.pair = state.pair or changes.pair is null
                    where
                        state.model = 'm1_index'
                        and changes.xid >= pg_snapshot_xmin(state.consumed_snapshot)
                        and not pg_visible_in_snapshot(changes.xid, state.consumed_snapshot)
                    group by state.pair
                    union all
                    select
                        never_built.pair,
                        '-infinity'::timestamptz as from_ts,
                        'infinity'::timestamptz as to_ts
                    from {{ pair_values() }} as never_built (pair)
                    where not exists (
                        select from build_state.model_pairs as state
                        where state.model = 'm1_index' and state.pair = never_built.pair
                    )
                ) as pending_ranges
                    on
                        tested_rows.pair = pending_ranges.pair
                        and tested_rows.ts_utc between pending_ranges.from_ts and pending_ranges.to_ts
                where {{ where if where else 'true' }}
            ) as {{ relation.identifier }}
        {%- endset -%}
        {{ return(filtered) }}
    {%- endif -%}
    {%- if written or where -%}
        {%- set filtered -%}
            (
                select tested_rows.*
                from {{ relation }} as tested_rows
                {%- if written %}
                inner join build_state.model_pairs as written_ranges
                    on
                        written_ranges.model = '{{ relation.identifier }}'
                        and written_ranges.invocation_id = '{{ invocation_id }}'
                        and tested_rows.pair = written_ranges.pair
                        and tested_rows.ts_utc between written_ranges.rewrote_from_ts and written_ranges.rewrote_to_ts
                {%- endif %}
                where {{ where if where else 'true' }}
            ) as {{ relation.identifier }}
        {%- endset -%}
        {{ return(filtered) }}
    {%- endif -%}
    {{ return(relation) }}
{%- endmacro %}


{#- True when `relation` is a model this invocation built incrementally (not in full). -#}
{% macro written_rows_of(relation) -%}
    {%- if not execute or flags.WHICH != 'build' or var('full_tests', false) or relation.identifier is none -%}
        {{ return(false) }}
    {%- endif -%}
    {%- set built = run_query(
        "select count(*) from build_state.model_runs where invocation_id = '" ~ invocation_id
        ~ "' and model = '" ~ relation.identifier ~ "' and not full_refresh") -%}
    {{ return(built.rows[0][0] > 0) }}
{%- endmacro %}


{#- True when `relation` is the view of source bars and this is an incremental dbt build (m1_index
    built before, no --full-refresh, no full_tests): its tests read the bars m1_index will read. -#}
{% macro pending_source_rows_of(relation) -%}
    {%- if not execute or flags.WHICH != 'build' or var('full_tests', false) or flags.FULL_REFRESH
        or relation.identifier != 'stg_m1_bars' -%}
        {{ return(false) }}
    {%- endif -%}
    {%- set built = run_query(
        "select count(*) from build_state.model_pairs where model = 'm1_index'") -%}
    {{ return(built.rows[0][0] > 0) }}
{%- endmacro %}
