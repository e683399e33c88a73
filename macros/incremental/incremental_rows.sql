{#-
    How an incremental model finds the rows to recompute and the history they need: changes
    drive the build (README, "Incremental runs, backfills, corrections").

    Every write to raw.m1_bars is in raw.m1_changes (statement triggers); every model build
    logs the minutes it rewrote in build_state.rewrites. Before a model's SQL runs,
    prepare_increment() computes per pair, in a temporary table (increment_table()):
      - the changes of its input it has not consumed yet: those whose writing transaction is
        not visible in the snapshot its last build of the pair read with (a pair never built
        is recomputed whole);
      - from them, in bars of the input (its absolute bar_number): the rows to emit (from the
        first changed bar minus `back_bars`, to the last changed bar plus `forward_bars`, or to
        the pair's end) and the rows to read (from `lookback_bars` before the first emitted row,
        aligned down to a multiple of `grid_bars` and `reference_bars` more, so every block-
        restarted running sum starts where a full build starts it; `read_ahead_bars` after the
        last emitted one);
      - the snapshot it reads with, recorded by record_increment() (post-hook) in the same
        transaction as its delete+insert.
    The bounds are per-pair joins and lookups on (pair, ts_utc) and (pair, bar_number): no scan,
    shard-local on Citus (distributed by pair).
-#}

{% macro increment_table() -%}
    {{ return('bqx_increment_' ~ this.identifier) }}
{%- endmacro %}


{#- True while dbt runs or builds models (not when it compiles, lints, parses or tests). -#}
{% macro increment_executing() -%}
    {{ return(execute and flags.WHICH in ('run', 'build')) }}
{%- endmacro %}


{#- The vars that change values without changing a column name: a model built with other
    values cannot be continued incrementally (its old rows would be wrong). -#}
{% macro value_vars() -%}
    {%- set names = [
        'baseline_date', 'bqx_series_window', 'bollinger_k', 'macd_fast', 'macd_slow', 'macd_signal',
        'stoch_fastk', 'stoch_slowk', 'stoch_slowd', 'adx_period', 'cci_period', 'rsi_periods',
        'smoother_lookback_bars', 'gap_limit_minutes', 'spike_window', 'spike_sigma_multiple',
        'volume_tod_days',
    ] -%}
    {%- set values = {} -%}
    {%- for name in names -%}
        {%- do values.update({name: var(name, none)}) -%}
    {%- endfor -%}
    {{ return(values) }}
{%- endmacro %}


{% macro pair_values() -%}
    (values {% for pair in var('pairs') %}('{{ pair }}'){{ ", " if not loop.last }}{% endfor %})
{%- endmacro %}


{#- Stops an incremental build of a model built with other value_vars(), naming them. -#}
{% macro check_built_vars() -%}
    {%- set stored = run_query(
        "select vars::text from build_state.model_vars where model = '" ~ this.identifier ~ "'") -%}
    {%- if stored.rows | length > 0 -%}
        {%- set before = fromjson(stored.rows[0][0]) -%}
        {%- set now = value_vars() -%}
        {%- set changed = [] -%}
        {%- for name, value in now.items() -%}
            {%- if tojson(before.get(name)) != tojson(value) -%}
                {%- do changed.append(name ~ ': ' ~ tojson(before.get(name)) ~ ' -> ' ~ tojson(value)) -%}
            {%- endif -%}
        {%- endfor -%}
        {%- if changed -%}
            {{ exceptions.raise_compiler_error(
                this.identifier ~ " was built with other values of " ~ changed | join(', ')
                ~ ": every row would change. Rebuild it with `bqx build --full-refresh` (or "
                ~ "`--full-refresh --select " ~ this.identifier ~ "+`).") }}
        {%- endif -%}
    {%- endif -%}
{%- endmacro %}


{#- A backfill asked on the command line (`bqx build --from X --to Y`, or the vars
    recompute_from / recompute_to): treated as a change of the input over [from, to]. -#}
{% macro backfill_range() -%}
    {%- set start = var('recompute_from', none) -%}
    {%- set stop = var('recompute_to', none) -%}
    {%- if start is none and stop is none -%}
        {{ return(none) }}
    {%- endif -%}
    {{ return({
        'from': utc_timestamp(start) if start is not none else "'-infinity'::timestamptz",
        'to': utc_timestamp(stop) ~ " - interval '1 microsecond'" if stop is not none else "'infinity'::timestamptz",
    }) }}
{%- endmacro %}


{#-
    Creates increment_table(): one row per pair of var('pairs') with
      recompute         whether the pair has anything to recompute
      emit_from_ts, emit_to_ts   the minutes this build deletes and writes again (inclusive)
      read_from_ts, read_to_ts   the input minutes it reads (inclusive)
      input_rows        whether the input has a bar in the emitted range (loud failure check)
      consumed_snapshot the snapshot the input is read with
    `input` is the model read (a relation with bar_number), or none for m1_index (reads raw).
-#}
{% macro prepare_increment(input, lookback_bars=0, grid_bars=1, reference_bars=0, forward_bars=none,
                           back_bars=0, read_ahead_bars=0, moving_columns=none) -%}
{%- if not increment_executing() -%}
    {{ return(none) }}
{%- endif -%}
{%- set full = not is_incremental() -%}
{%- if not full -%}
    {%- do check_built_vars() -%}
{%- endif -%}
{%- set backfill = backfill_range() -%}
{%- set input_model = input.identifier if input is not none else none -%}
{%- set sql -%}
-- no `bqx load` meanwhile, and one writer per model: a concurrent build of the same model waits
-- here until this one commits, then computes its bounds from this one's recorded state (both
-- locks are held until the model's commit)
{{ model_locks() }};
drop table if exists {{ increment_table() }};
create temporary table {{ increment_table() }} as
with known_pairs as (
    select known.pair from {{ pair_values() }} as known (pair)
),

own_state as (
    select built.pair, built.consumed_snapshot, built.baseline_ts, built.baseline_rate
    from build_state.model_pairs as built
    where built.model = '{{ this.identifier }}'
),

{%- if input is none %}

pending_changes as (
    -- raw.m1_changes not visible in the snapshot of the last build of the pair; an update of
    -- values keeps every bar's position (a bounded range), an insert or a delete moves every
    -- later bar's bar_number (recompute to the pair's end)
    select
        known_pairs.pair,
        min(changes.first_ts) as changed_from,
        case
            when bool_or(changes.operation <> 'update') then 'infinity'::timestamptz
            else max(changes.last_ts)
        end as changed_to
    from known_pairs
    inner join own_state on known_pairs.pair = own_state.pair
    inner join raw.m1_changes as changes
        on (changes.pair = known_pairs.pair or changes.pair is null)
    where
        changes.xid >= pg_snapshot_xmin(own_state.consumed_snapshot)
        and not pg_visible_in_snapshot(changes.xid, own_state.consumed_snapshot)
    group by known_pairs.pair
),
{%- else %}

pending_changes as (
    -- the rewrites of the input not visible in the snapshot of the last build of the pair
    select
        known_pairs.pair,
        min(rewrites.from_ts) as changed_from,
        max(rewrites.to_ts) as changed_to
    from known_pairs
    inner join own_state on known_pairs.pair = own_state.pair
    inner join build_state.rewrites as rewrites
        on rewrites.model = '{{ input_model }}' and rewrites.pair = known_pairs.pair
    where
        rewrites.xid >= pg_snapshot_xmin(own_state.consumed_snapshot)
        and not pg_visible_in_snapshot(rewrites.xid, own_state.consumed_snapshot)
    group by known_pairs.pair
),
{%- endif %}

changed_ranges as (
    select
        known_pairs.pair,
        {%- if full %}
        '-infinity'::timestamptz as changed_from,
        'infinity'::timestamptz as changed_to
        {%- else %}
        -- a pair never built is built whole; a backfill widens the changed range
        case
            when own_state.pair is null then '-infinity'::timestamptz
            {%- if backfill %}
            else least(pending_changes.changed_from, {{ backfill.from }})
            {%- else %}
            else pending_changes.changed_from
            {%- endif %}
        end as changed_from,
        case
            when own_state.pair is null then 'infinity'::timestamptz
            {%- if backfill %}
            else greatest(pending_changes.changed_to, {{ backfill.to }})
            {%- else %}
            else pending_changes.changed_to
            {%- endif %}
        end as changed_to
        {%- endif %}
    from known_pairs
    left join own_state on known_pairs.pair = own_state.pair
    left join pending_changes on known_pairs.pair = pending_changes.pair
)

{%- if input is none %}
{#- m1_index: its rows are the bars themselves (no lookback); a change at or before the pair's
    baseline bar, or a baseline bar that moved, recomputes the pair whole (every index moves). -#}
select
    changed_ranges.pair,
    case
        when baselines.baseline_ts is distinct from own_state.baseline_ts
            or baselines.baseline_rate is distinct from own_state.baseline_rate
            or changed_ranges.changed_from <= own_state.baseline_ts
            then '-infinity'::timestamptz
        else changed_ranges.changed_from
    end as emit_from_ts,
    case
        when baselines.baseline_ts is distinct from own_state.baseline_ts
            or baselines.baseline_rate is distinct from own_state.baseline_rate
            or changed_ranges.changed_from <= own_state.baseline_ts
            then 'infinity'::timestamptz
        else changed_ranges.changed_to
    end as emit_to_ts,
    baselines.baseline_ts,
    baselines.baseline_rate,
    pg_current_snapshot() as consumed_snapshot,
    clock_timestamp() as prepared_at,
    pg_current_xact_id() as prepared_xid
from changed_ranges
left join own_state on changed_ranges.pair = own_state.pair
left join {{ ref('baseline_rates') }} as baselines on changed_ranges.pair = baselines.pair;

alter table {{ increment_table() }}
    add column recompute boolean,
    add column read_from_ts timestamptz,
    add column read_to_ts timestamptz,
    add column first_bar_number bigint,
    add column input_rows boolean,
    add column rows_written bigint;

update {{ increment_table() }} as bounds
set
    recompute = bounds.emit_from_ts is not null,
    read_from_ts = bounds.emit_from_ts,
    read_to_ts = bounds.emit_to_ts,
    -- bar_number of the first bar rewritten: the bars before it are unchanged
    first_bar_number = coalesce((
        {%- if full %}
        select null::bigint
        {%- else %}
        -- per-pair probes as functions: shard-local on Citus (macros/distribution/distribution.sql)
        select bqx_functions.pair_last_bar_number('{{ this }}'::regclass, bounds.pair, bounds.emit_from_ts) + 1
        {%- endif %}
    ), 0),
    input_rows = bqx_functions.pair_has_rows(
        '{{ ref('stg_m1_bars') }}'::regclass, bounds.pair, bounds.emit_from_ts, bounds.emit_to_ts
    );
{%- else %}
{#- A model of an input with bar_number: bqx_functions.increment_bounds turns the changed range
    into the emitted and read ranges (macros/functions/increment_bounds.sql). -#}
select
    changed_ranges.pair,
    bounds.emit_from_ts is not null as recompute,
    bounds.emit_from_ts,
    bounds.emit_to_ts,
    bounds.read_from_ts,
    bounds.read_to_ts,
    bounds.input_rows,
    pg_current_snapshot() as consumed_snapshot,
    clock_timestamp() as prepared_at,
    pg_current_xact_id() as prepared_xid,
    null::bigint as rows_written
from changed_ranges
left join lateral bqx_functions.increment_bounds(
    '{{ input }}'::regclass,
    changed_ranges.pair,
    changed_ranges.changed_from,
    changed_ranges.changed_to,
    {{ lookback_bars }},
    {{ grid_bars }},
    {{ reference_bars }},
    {{ 'null' if forward_bars is none else forward_bars }},
    {{ back_bars }},
    {{ read_ahead_bars }},
    {{ sql_text_array(moving_columns) }}
) as bounds on changed_ranges.changed_from is not null;
{%- endif %}

analyze {{ increment_table() }}
{%- endset -%}
{%- do run_query(sql) -%}
{%- endmacro %}


{#-
    The rows of `upstream` a feature model reads (`columns`, and is_new: the row is to be
    written), after prepare_increment() with the same arguments. A full build reads every row.
-#}
{% macro incremental_rows(upstream, columns, lookback_bars, grid_bars=1, reference_bars=0,
                          forward_bars=none, back_bars=0, read_ahead_bars=0, moving_columns=none) -%}
{#- forward_bars: 'end' (the rows after a changed bar all depend on it: recursive smoothers,
    run lengths), or a number; by default the rows whose history includes a changed bar: the
    lookback plus two grid blocks (a block-restarted sum carries a change to its block's end). -#}
{%- if forward_bars == 'end' -%}
    {%- set forward = none -%}
{%- elif forward_bars is none -%}
    {%- set forward = lookback_bars + 2 * grid_bars -%}
{%- else -%}
    {%- set forward = forward_bars -%}
{%- endif -%}
{%- do prepare_increment(upstream, lookback_bars=lookback_bars, grid_bars=grid_bars,
        reference_bars=reference_bars, forward_bars=forward, back_bars=back_bars,
        read_ahead_bars=read_ahead_bars, moving_columns=moving_columns) -%}
{%- set increment = {
    'input': upstream | string, 'lookback_bars': lookback_bars, 'grid_bars': grid_bars,
    'reference_bars': reference_bars, 'forward_bars': forward, 'back_bars': back_bars,
    'read_ahead_bars': read_ahead_bars, 'moving_columns': moving_columns,
} -%}
/* bqx increment {{ tojson(increment) }} (read by `bqx audit`) */
select
    {%- for column in columns %}
    upstream_rows.{{ column }},
    {%- endfor %}
    {%- if is_incremental() %}
    upstream_rows.ts_utc between increment_bounds.emit_from_ts and increment_bounds.emit_to_ts as is_new
from {{ upstream }} as upstream_rows
inner join {{ increment_bounds_relation('increment_bounds') }}
    on
        upstream_rows.pair = increment_bounds.pair
        and upstream_rows.ts_utc between increment_bounds.read_from_ts and increment_bounds.read_to_ts
where increment_bounds.recompute
    {%- else %}
    true as is_new
from {{ upstream }} as upstream_rows
    {%- endif %}
{%- endmacro %}


{#- A text[] literal of `names` (column names), or null. -#}
{% macro sql_text_array(names) -%}
    {%- if names is none -%}
        null::text[]
    {%- else -%}
        array[{%- for name in names -%}'{{ name }}'{{ ", " if not loop.last }}{%- endfor -%}]::text[]
    {%- endif -%}
{%- endmacro %}


{#- m1_index's join to its bounds on an incremental run: the bars of the ranges to rewrite. -#}
{% macro increment_rows_join(alias) -%}
    {%- if is_incremental() -%}
inner join {{ increment_bounds_relation('increment_bounds') }}
        on
            {{ alias }}.pair = increment_bounds.pair
            and {{ alias }}.ts_utc between increment_bounds.emit_from_ts and increment_bounds.emit_to_ts
            and increment_bounds.recompute
    {%- endif -%}
{%- endmacro %}


{#- What every feature model emits: pair, ts_utc and its feature columns (explicit, from the
    family's column-name macro) of the rows incremental_rows flagged new. -#}
{% macro new_feature_rows(relation, column_names) -%}
select
    {{ relation }}.pair,
    {{ relation }}.ts_utc,
    {%- for column in column_names %}
    {{ relation }}.{{ column }}{{ "," if not loop.last }}
    {%- endfor %}
from {{ relation }}
where {{ relation }}.is_new
{%- endmacro %}
