{#-
    The rows of `upstream` a feature model reads, and which of them it emits.

    Full build: every row, all flagged `is_new`.
    Incremental run: per pair, the rows after the last bar already in {{ this }} (or from
    var('recompute_from') when that is set: a backfill or a late correction) are new, and the
    `lookback_bars` bars before the first new one are read too, so every window and every
    recursive smoother of a new row sees the same history as in a full build. The model
    filters on `is_new` at the end; delete+insert on (pair, ts_utc) replaces recomputed rows.

    Cost: per pair, one max() and one index walk of `lookback_bars` rows on (pair, ts_utc),
    not a scan of the history.

    Known limit: a bar inserted before the last built bar (a gap filled late) is only picked
    up with `recompute_from` set at or before it.
-#}
{% macro incremental_rows(upstream, columns, lookback_bars) -%}
select
    {%- for column in columns %}
    upstream_rows.{{ column }},
    {%- endfor %}
    {%- if is_incremental() %}
    coalesce(upstream_rows.ts_utc > increment_bounds.last_built_ts, true) as is_new
from {{ upstream }} as upstream_rows
left join ({{ incremental_bounds(upstream, lookback_bars) }}) as increment_bounds
    on upstream_rows.pair = increment_bounds.pair
where
    increment_bounds.read_from_ts is null
    or upstream_rows.ts_utc >= increment_bounds.read_from_ts
    {%- else %}
    true as is_new
from {{ upstream }} as upstream_rows
    {%- endif %}
{%- endmacro %}


{#- Per pair already built: the last bar kept as is, and the first bar to read again. -#}
{% macro incremental_bounds(upstream, lookback_bars) -%}
select
    built.pair,
    built.last_built_ts,
    history_start.ts_utc as read_from_ts
from (
    select
        known_pairs.pair,
        {%- if var('recompute_from') %}
        least(
            (select max(done.ts_utc) from {{ this }} as done where done.pair = known_pairs.pair),
            {{ utc_timestamp(var('recompute_from')) }} - interval '1 microsecond'
        ) as last_built_ts
        {%- else %}
        (select max(done.ts_utc) from {{ this }} as done where done.pair = known_pairs.pair)
            as last_built_ts
        {%- endif %}
    from unnest(array[{{ quoted_pairs() }}]) as known_pairs (pair)
) as built
left join lateral (
    select history.ts_utc
    from {{ upstream }} as history
    where
        history.pair = built.pair
        and history.ts_utc <= built.last_built_ts
    order by history.ts_utc desc
    limit 1 offset {{ lookback_bars }}
) as history_start on true
where built.last_built_ts is not null
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
