-- No window: lookback 0 (incremental runs read only the rows they write).
with source_rows as (
    {{ incremental_rows(ref('m1_index'), ['pair', 'ts_utc'], lookback_bars=0, forward_bars=0) }}
),

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

{{ new_feature_rows('time_values', time_column_names()) }}
