{{ config(indexes=[{'columns': ['pair', 'ts_utc'], 'unique': true}]) }}

-- Rolling mean, std, skew, kurt, min and max of the rate index close_idx per window W of
-- var('rolling_windows'): the maths is in macros/features/statistics.sql.
with source_rows as (
    {{ incremental_rows(ref('m1_index'), ['pair', 'ts_utc', 'close_idx'], lookback_bars=var('rolling_windows') | max) }}
),

{{ statistics_ctes('source_rows', 'close_idx') }}

select
    statistics_values.pair,
    statistics_values.ts_utc,
    {% for column in statistics_column_names() -%}
        statistics_values.{{ column }}{% if not loop.last %},{% endif %}
    {% endfor %}
from statistics_values
where statistics_values.is_new
