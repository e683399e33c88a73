{#-
    The incremental strategy `recompute` (incremental_strategy='recompute'): per pair, delete the
    rows of the range prepare_increment() chose (emit_from_ts .. emit_to_ts: this also removes
    the rows of bars deleted from the source, which dbt's delete+insert, deleting only the keys
    it inserts again, would keep), then insert the recomputed rows. One delete per pair with
    literal bounds: index range deletes, and router queries on Citus (distributed by pair).
    Also counts the rows written per pair for record_increment().
-#}
{% macro get_incremental_recompute_sql(arg_dict) -%}
{%- set target = arg_dict['target_relation'] -%}
{%- set source = arg_dict['temp_relation'] -%}
{%- set columns = get_quoted_csv(arg_dict['dest_columns'] | map(attribute='name')) -%}
{%- set ranges = run_query(
    "select pair, emit_from_ts::text, emit_to_ts::text from " ~ increment_table()
    ~ " where recompute order by pair") -%}
{%- for pair, emit_from, emit_to in ranges.rows %}
delete from {{ target }}
where pair = '{{ pair }}' and ts_utc between '{{ emit_from }}'::timestamptz and '{{ emit_to }}'::timestamptz;
{%- endfor %}
update {{ increment_table() }} as bounds
set rows_written = coalesce((
    select count(*) from {{ source }} as written where written.pair = bounds.pair
), 0)
where bounds.recompute;
insert into {{ target }} ({{ columns }})
select {{ columns }} from {{ source }}
{%- endmacro %}


{#-
    Post-hook of every model built through prepare_increment(), in the transaction of its
    delete+insert: fails the build when the model wrote no row for a pair whose input has bars
    in the range it recomputed (the failure the old system hid for hours), then records per
    pair the snapshot consumed, the range rewritten (for the models downstream), the last built
    minute and the rows written, the vars built with, and the model's line of the build log.
-#}
{% macro record_increment() -%}
{%- if increment_executing() -%}
{%- set bounds = increment_table() -%}
{%- if not is_incremental() and distributed() %}
-- Citus: a count per pair on its shard (macros/distribution/distribution.sql)
update {{ bounds }} as bounds
set rows_written = bqx_functions.pair_row_count('{{ this }}'::regclass, bounds.pair);
{%- elif not is_incremental() %}
{{ full_build_rows_written(bounds) }}
{%- endif %}
do $loud$
declare
    silent text;
begin
    select string_agg(bounds.pair, ', ' order by bounds.pair) into silent
    from {{ bounds }} as bounds
    where bounds.recompute and bounds.input_rows and coalesce(bounds.rows_written, 0) = 0;
    -- the bounds, the per-model lock and this write must be one transaction (dbt runs a model's
    -- compilation queries, its SQL and its hooks in one): say so if a dbt version ever changes it
    if exists (select from {{ bounds }} as bounds where bounds.prepared_xid <> pg_current_xact_id()) then
        raise exception '{{ this.identifier }}: dbt committed between the increment''s bounds and its write';
    end if;
    if silent is not null then
        raise exception '{{ this.identifier }} wrote 0 rows for pairs whose input has bars to (re)compute: %', silent;
    end if;
end
$loud$;
insert into build_state.model_pairs as state (
    model, pair, consumed_snapshot, rewrote_from_ts, rewrote_to_ts, last_built_ts, rows_written,
    invocation_id, built_at, baseline_ts, baseline_rate
)
select
    '{{ this.identifier }}',
    bounds.pair,
    bounds.consumed_snapshot,
    case when bounds.recompute then bounds.emit_from_ts end,
    case when bounds.recompute then bounds.emit_to_ts end,
    -- a probe per pair as a function: shard-local on Citus (macros/distribution/distribution.sql)
    bqx_functions.pair_last_ts('{{ this }}'::regclass, bounds.pair),
    coalesce(bounds.rows_written, 0),
    '{{ invocation_id }}',
    clock_timestamp(),
    {{ 'bounds.baseline_ts, bounds.baseline_rate' if this.identifier == 'm1_index' else 'null, null' }}
from {{ bounds }} as bounds
on conflict (model, pair) do update
set
    consumed_snapshot = excluded.consumed_snapshot,
    rewrote_from_ts = coalesce(excluded.rewrote_from_ts, state.rewrote_from_ts),
    rewrote_to_ts = coalesce(excluded.rewrote_to_ts, state.rewrote_to_ts),
    last_built_ts = excluded.last_built_ts,
    rows_written = case when excluded.rewrote_from_ts is null then state.rows_written else excluded.rows_written end,
    invocation_id = case when excluded.rewrote_from_ts is null then state.invocation_id else excluded.invocation_id end,
    built_at = case when excluded.rewrote_from_ts is null then state.built_at else excluded.built_at end,
    baseline_ts = excluded.baseline_ts,
    baseline_rate = excluded.baseline_rate;
insert into build_state.rewrites (model, pair, from_ts, to_ts)
select '{{ this.identifier }}', bounds.pair, bounds.emit_from_ts, bounds.emit_to_ts
from {{ bounds }} as bounds
where bounds.recompute;
insert into build_state.model_vars (model, vars)
values ('{{ this.identifier }}', $vars${{ tojson(value_vars()) }}$vars$::jsonb)
on conflict (model) do update set vars = excluded.vars, built_at = clock_timestamp();
insert into build_state.model_runs (
    invocation_id, model, started_at, full_refresh, pairs_recomputed, rows_written
)
select
    '{{ invocation_id }}',
    '{{ this.identifier }}',
    min(bounds.prepared_at),
    {{ 'false' if is_incremental() else 'true' }},
    count(*) filter (where bounds.recompute and (bounds.input_rows or bounds.rows_written > 0)),
    coalesce(sum(bounds.rows_written), 0)
from {{ bounds }} as bounds
on conflict (invocation_id, model) do update
set finished_at = clock_timestamp(), rows_written = excluded.rows_written;
drop table {{ bounds }}
{%- endif -%}
{%- endmacro %}


{#-
    The rows a full build wrote per pair, without reading the table (a count per pair scanned all
    of it: ~4% of every model's time, 1 s per model at 28 pairs x 3 months). Every row of a
    market model is a bar of m1_index (one row per bar, unique on (pair, ts_utc)), so a pair's rows
    are at most the bars between its first and last row: their span of m1_index.bar_number (dense
    per pair), two probes on this table's unique index and two on m1_index's. The spans are the
    rows exactly when they add up to the rows this transaction inserted into the table
    (pg_stat_get_xact_tuples_inserted, exact within the transaction: each pair is then at its
    bound); otherwise (a row skipped inside a span, or a row that is no bar) the table is counted.
    A pair without a row gets 0 either way, which the silent-pair check below reads.
-#}
{% macro full_build_rows_written(bounds) -%}
{%- set bars = market_index_relation() -%}
update {{ bounds }} as bounds
set rows_written = coalesce(spans.bars_spanned, 0)
from (
    select
        known.pair,
        last_bar.bar_number - first_bar.bar_number + 1 as bars_spanned
    from {{ pair_values() }} as known (pair)
    left join lateral (
        select built.ts_utc from {{ this }} as built
        where built.pair = known.pair
        order by built.ts_utc
        limit 1
    ) as first_row on true
    left join lateral (
        select built.ts_utc from {{ this }} as built
        where built.pair = known.pair
        order by built.ts_utc desc
        limit 1
    ) as last_row on true
    left join {{ bars }} as first_bar
        on known.pair = first_bar.pair and first_row.ts_utc = first_bar.ts_utc
    left join {{ bars }} as last_bar
        on known.pair = last_bar.pair and last_row.ts_utc = last_bar.ts_utc
) as spans
where bounds.pair = spans.pair;
do $rows_written$
begin
    if (select coalesce(sum(bounds.rows_written), 0) from {{ bounds }} as bounds)
        <> pg_catalog.pg_stat_get_xact_tuples_inserted('{{ this }}'::regclass) then
        update {{ bounds }} as bounds
        set rows_written = coalesce(written.row_count, 0)
        from (
            select known.pair, counted.row_count
            from {{ pair_values() }} as known (pair)
            left join (
                select built.pair, count(*) as row_count from {{ this }} as built group by built.pair
            ) as counted on known.pair = counted.pair
        ) as written
        where bounds.pair = written.pair;
    end if;
end
$rows_written$;
{%- endmacro %}
