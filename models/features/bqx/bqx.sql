{{ config(indexes=[{'columns': ['pair', 'ts_utc'], 'unique': true}]) }}

-- BQX momentum of the rate index close_idx per window W of var('bqx_windows'): the maths is in
-- macros/features/bqx.sql.
with source_rows as (
    {{ incremental_rows(ref('m1_index'), ['pair', 'ts_utc', 'close_idx'], lookback_bars=var('bqx_windows') | max) }}
),

{{ bqx_ctes('source_rows', 'close_idx') }}

select
    bqx_values.pair,
    bqx_values.ts_utc,
    {% for column in bqx_column_names() -%}
        bqx_values.{{ column }}{% if not loop.last %},{% endif %}
    {% endfor %}
from bqx_values
where bqx_values.is_new
