{{ config(indexes=[{'columns': ['pair', 'ts_utc'], 'unique': true}]) }}

-- Bollinger bands of the rate index close_idx per window W of var('bollinger_windows'), width
-- relative to the mid: the maths is in macros/features/bollinger.sql.
with source_rows as (
    {{ incremental_rows(ref('m1_index'), ['pair', 'ts_utc', 'close_idx'], lookback_bars=var('bollinger_windows') | max) }}
),

{{ bollinger_ctes('source_rows', 'close_idx', width_relative_to_mid=true) }}

select
    bollinger_bands.pair,
    bollinger_bands.ts_utc,
    {% for column in bollinger_column_names() -%}
        bollinger_bands.{{ column }}{% if not loop.last %},{% endif %}
    {% endfor %}
from bollinger_bands
where bollinger_bands.is_new
