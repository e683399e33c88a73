{#-
    Citus, distributed by pair (docs/scale-out.md). The switch is the source itself: when
    raw.m1_bars is a Citus distributed table (`bqx db distribute`), every table model is created
    empty, distributed by pair and colocated with raw.m1_bars, and filled by `insert ... select`,
    which Citus runs on the workers, shard by shard (a pair's bars, features and windows live on one
    shard); views stay views. Detected rather than a var: a model built as a local table beside a
    distributed source would pull every bar to the coordinator, and a plain PostgreSQL database (or
    a Citus database whose source is not distributed) builds as before, with nothing to set.
-#}

{#- True when raw.m1_bars is a Citus distributed table (only while dbt executes; a parse, a
    lint or a compile without a connection renders the plain PostgreSQL form). -#}
{% macro distributed() -%}
    {%- if not execute -%}
        {{ return(false) }}
    {%- endif -%}
    {%- set citus = run_query("select count(*) from pg_extension where extname = 'citus'") -%}
    {%- if citus.rows[0][0] == 0 -%}
        {{ return(false) }}
    {%- endif -%}
    {%- set found = run_query(
        "select count(*) from pg_dist_partition where logicalrelid = to_regclass('raw.m1_bars')") -%}
    {{ return(found.rows[0][0] > 0) }}
{%- endmacro %}


{#- dbt-postgres' create_table_as, overridden (dbt dispatches to the root project first): on a
    distributed source a table model is created empty from the model's SQL (`with no data`: planned,
    not run), distributed by pair colocated with raw.m1_bars, then filled by `insert ... select`, so
    its rows go from the workers' shards to the workers' shards, never through the coordinator (the
    default `create table as` computes on the workers, collects every row on the coordinator and
    leaves them there). A model configured `distribution='reference'` (baseline_rates: a row per
    pair, joined by the build's bookkeeping on the coordinator) is a reference table instead. An incremental run's temporary table (the increment's new rows) stays a
    temporary table on the coordinator: Citus cannot distribute one, and dbt reads its columns. -#}
{% macro postgres__create_table_as(temporary, relation, sql) -%}
    {%- if not temporary and distributed() -%}
create table {{ relation }} as (
    {{ sql }}
) with no data;
        {%- if config.get('distribution', 'pair') == 'reference' %}
select create_reference_table('{{ relation }}');
        {%- else %}
select create_distributed_table('{{ relation }}', 'pair', colocate_with => 'raw.m1_bars');
        {%- endif %}
insert into {{ relation }}
{{ sql }}
    {%- else -%}
{{ dbt.postgres__create_table_as(temporary, relation, sql) }}
    {%- endif -%}
{%- endmacro %}


{#- The relation (with its alias) an incremental model joins for its per-pair bounds (prepare_increment()'s
    temporary table). On a distributed source the bounds are given as a literal VALUES list
    instead: Citus joins a distributed table with a VALUES list on the workers, where a join with a
    coordinator's temporary table would first ship that table to them (a distributed subplan). -#}
{% macro increment_bounds_relation(alias) -%}
    {%- if not (increment_executing() and is_incremental() and distributed()) -%}
        {{ return(increment_table() ~ ' as ' ~ alias) }}
    {%- endif -%}
    {%- set types = {
        'pair': 'text', 'recompute': 'boolean', 'emit_from_ts': 'timestamptz', 'emit_to_ts': 'timestamptz',
        'read_from_ts': 'timestamptz', 'read_to_ts': 'timestamptz', 'first_bar_number': 'bigint',
    } -%}
    {%- set found = run_query(
        "select to_jsonb(bounds)::text from " ~ increment_table() ~ " as bounds order by bounds.pair") -%}
    {%- set rows = [] -%}
    {%- for row in found.rows -%}
        {%- do rows.append(fromjson(row[0])) -%}
    {%- endfor -%}
    {%- set columns = [] -%}
    {%- for name in types if name in rows[0] -%}
        {%- do columns.append(name) -%}
    {%- endfor -%}
    {%- set values = [] -%}
    {%- for row in rows -%}
        {%- set literals = [] -%}
        {%- for name in columns -%}
            {%- set value = row[name] -%}
            {%- if value is none -%}
                {%- do literals.append('null::' ~ types[name]) -%}
            {%- elif types[name] in ('boolean', 'bigint') -%}
                {%- do literals.append((value | string | lower) ~ '::' ~ types[name]) -%}
            {%- else -%}
                {%- do literals.append("'" ~ value ~ "'::" ~ types[name]) -%}
            {%- endif -%}
        {%- endfor -%}
        {%- do values.append('(' ~ literals | join(', ') ~ ')') -%}
    {%- endfor -%}
    {{ return('(values ' ~ values | join(', ') ~ ') as ' ~ alias ~ ' (' ~ columns | join(', ') ~ ')') }}
{%- endmacro %}


{#- A planner fence: keeps PostgreSQL from inlining a subquery's expressions into every
    expression that reads them (see the comments where it is used). On plain PostgreSQL
    `offset 0`, after the FROM clause; Citus cannot push a subquery with OFFSET down to the shards
    (it would plan it apart, a distributed subplan pulling its rows to the coordinator), so on a
    distributed source the fence is a window function over the pair's bars instead (a subquery
    with a window function is not inlined either; partitioned by pair, Citus runs it on the
    shard): `planner_fence_column(relation)` in the select list, `planner_fence()` after FROM.

    `planner_fence(relation)` also orders the fenced rows by relation.pair, relation.ts_utc.
    That costs no sort when they come in that order, and keeps the order known above the fence:
    PostgreSQL carries a subquery's row order up only to a query level that asks for it, so a
    window over the pair's bars above a plain `offset 0` fence sorted 375k presorted rows again
    (~4% of a model; measured on statistics, Bollinger and spread). Pass the relation only where
    the rows arrive in (pair, ts_utc) order, or the ORDER BY adds the sort it is meant to save. -#}
{% macro planner_fence(relation=none) -%}
    {%- if not distributed() %}{% if relation %}order by {{ relation }}.pair, {{ relation }}.ts_utc {% endif %}offset 0{% endif -%}
{%- endmacro %}

{% macro planner_fence_column(relation) -%}
    {%- if distributed() -%}
        , row_number() over (partition by {{ relation }}.pair order by {{ relation }}.ts_utc) as planner_fence
    {%- endif -%}
{%- endmacro %}


{#- Per-pair lookups for the build's bookkeeping (prepare_increment, record_increment): one
    index probe or range count on (pair, ts_utc) per call, as a query with `pair = $1`, which
    Citus sends to the pair's shard (a router query). The same lookups written as correlated
    subqueries over a list of pairs cannot run on Citus ("complex joins are only supported
    when all distributed tables are co-located ..."); on plain PostgreSQL they cost the same
    probes. -#}
{% macro create_pair_lookup_functions() -%}
create schema if not exists bqx_functions;
-- the newest row of the pair before `before` (NULL: none)
create or replace function bqx_functions.pair_last_ts(
    relation regclass, pair_name text, before timestamptz default 'infinity'
) returns timestamptz
language plpgsql stable as $lookup$
declare
    found timestamptz;
begin
    execute format('select ts_utc from %s where pair = $1 and ts_utc < $2 order by ts_utc desc limit 1', relation)
        into found using pair_name, before;
    return found;
end
$lookup$;
-- the bar_number of that row (relations with bar_number: m1_index, bqx)
create or replace function bqx_functions.pair_last_bar_number(
    relation regclass, pair_name text, before timestamptz default 'infinity'
) returns bigint
language plpgsql stable as $lookup$
declare
    found bigint;
begin
    execute format(
        'select bar_number from %s where pair = $1 and ts_utc < $2 order by ts_utc desc limit 1', relation
    ) into found using pair_name, before;
    return found;
end
$lookup$;
-- whether the pair has a row in [from_ts, to_ts]
create or replace function bqx_functions.pair_has_rows(
    relation regclass, pair_name text, from_ts timestamptz, to_ts timestamptz
) returns boolean
language plpgsql stable as $lookup$
declare
    found boolean;
begin
    execute format('select exists (select from %s where pair = $1 and ts_utc between $2 and $3)', relation)
        into found using pair_name, from_ts, to_ts;
    return found;
end
$lookup$;
-- the pair's number of rows
create or replace function bqx_functions.pair_row_count(relation regclass, pair_name text) returns bigint
language plpgsql stable as $lookup$
declare
    found bigint;
begin
    execute format('select count(*) from %s where pair = $1', relation) into found using pair_name;
    return found;
end
$lookup$
{%- endmacro %}


{#- baseline_rates on Citus (models/staging/baseline_rates.sql): the per-pair probes of a VALUES
    list it uses on one server (`lateral ... limit 1`, correlated subqueries) cannot run on the
    shards ("complex joins are only supported when all distributed tables are co-located and
    joined on their distribution columns"); grouped by pair, each shard answers for its pairs. -#}
{% macro distributed_baseline_rates_sql(bars_relation) -%}
-- Citus: each shard finds its pairs' first bar at or after the baseline date
select
    bars.pair,
    bars.ts_utc as baseline_ts,
    bars.close as baseline_rate
from {{ bars_relation }} as bars
inner join (
    select
        after_baseline.pair,
        min(after_baseline.ts_utc) as baseline_ts
    from {{ bars_relation }} as after_baseline
    where after_baseline.ts_utc >= {{ utc_timestamp(var('baseline_date')) }}
    group by after_baseline.pair
) as first_bars
    on bars.pair = first_bars.pair and bars.ts_utc = first_bars.baseline_ts
{%- endmacro %}

{#- The pairs whose last bar is before the baseline date, with that bar (baseline_rates' check). -#}
{% macro distributed_pairs_before_baseline_sql(bars_relation) -%}
select
    bars.pair,
    max(bars.ts_utc) as last_ts
from {{ bars_relation }} as bars
group by bars.pair
having max(bars.ts_utc) < {{ utc_timestamp(var('baseline_date')) }}
order by bars.pair
{%- endmacro %}
