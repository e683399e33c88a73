-- No window: lookback 0 (incremental runs read only the rows they write).
{#- On Citus (distributed by pair, macros/distribution/distribution.sql) the calendar is computed
    per pair and minute, on the pair's shard: minutes shared across pairs are not shard-local. -#}
{%- set by_pair = distributed() %}
with source_rows as (
    {{ incremental_rows(ref('m1_index'), ['pair', 'ts_utc'], lookback_bars=0, forward_bars=0) }}
),
{%- if by_pair %}

    new_rows as (
        -- (pair, ts_utc) is unique in m1_index: each row once, read once (a CTE read twice would be
        -- planned apart by Citus, a distributed subplan)
        select
            source_rows.pair,
            source_rows.ts_utc
        from source_rows
        where source_rows.is_new
    ),

    minute_calendar as (
        {{ time_features_sql('new_rows', by_pair=true) }}
    ),

    time_values as (
        select
            minute_calendar.pair,
            minute_calendar.ts_utc,
            true as is_new,
            {% for column in time_column_names() -%}
                minute_calendar.{{ column }}{% if not loop.last %},{% endif %}
            {% endfor %}
        from minute_calendar
    )
{%- else %}

    new_minutes as (
        -- each minute once: the features depend on ts_utc alone and all pairs share the minute, so
        -- the time zone conversions run once per minute instead of once per pair and minute
        select distinct source_rows.ts_utc
        from source_rows
        where source_rows.is_new
    ),

    minute_calendar as (
        {{ time_features_sql('new_minutes') }}
    ),

    time_values as (
        select
            source_rows.pair,
            source_rows.ts_utc,
            source_rows.is_new,
            {% for column in time_column_names() -%}
                minute_calendar.{{ column }}{% if not loop.last %},{% endif %}
            {% endfor %}
        from source_rows
        inner join minute_calendar on source_rows.ts_utc = minute_calendar.ts_utc
    )
{%- endif %}

{{ new_feature_rows('time_values', time_column_names()) }}
