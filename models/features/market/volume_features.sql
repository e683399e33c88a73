{{ config(indexes=[{'columns': ['pair', 'ts_utc'], 'unique': true}]) }}

with source_rows as (
    {{ incremental_rows(
        ref('m1_index'),
        ['pair', 'ts_utc', 'high_idx', 'low_idx', 'close_idx', 'volume'],
        lookback_bars=volume_lookback_bars(),
    ) }}
),

volume_values as (
    {{ volume_features_sql('source_rows') }}
)

select
    volume_values.pair,
    volume_values.ts_utc,
    {% for column in volume_column_names() -%}
        volume_values.{{ column }}{% if not loop.last %},{% endif %}
    {% endfor %}
from volume_values
where volume_values.is_new
