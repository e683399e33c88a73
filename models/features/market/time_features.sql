{{ config(indexes=[{'columns': ['pair', 'ts_utc'], 'unique': true}]) }}

-- No window: lookback 0 (incremental runs read only the new bars and the last one built).
with source_rows as (
    {{ incremental_rows(ref('m1_index'), ['pair', 'ts_utc'], lookback_bars=0) }}
),

time_values as (
    {{ time_features_sql('source_rows') }}
)

select
    time_values.pair,
    time_values.ts_utc,
    {% for column in time_column_names() -%}
        time_values.{{ column }}{% if not loop.last %},{% endif %}
    {% endfor %}
from time_values
where time_values.is_new
