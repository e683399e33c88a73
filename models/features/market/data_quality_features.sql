{{ config(indexes=[{'columns': ['pair', 'ts_utc'], 'unique': true}]) }}

with source_rows as (
    {{ incremental_rows(
        ref('m1_index'),
        ['pair', 'ts_utc', 'close_idx'],
        lookback_bars=data_quality_lookback_bars(),
    ) }}
),

data_quality_values as (
    {{ data_quality_features_sql('source_rows', built=this if is_incremental() else none) }}
)

select
    data_quality_values.pair,
    data_quality_values.ts_utc,
    {% for column in data_quality_column_names() -%}
        data_quality_values.{{ column }}{% if not loop.last %},{% endif %}
    {% endfor %}
from data_quality_values
where data_quality_values.is_new
