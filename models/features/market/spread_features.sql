{{ config(indexes=[{'columns': ['pair', 'ts_utc'], 'unique': true}]) }}

with source_rows as (
    {{ incremental_rows(
        ref('m1_index'),
        ['pair', 'ts_utc', 'spread_bps'],
        lookback_bars=spread_lookback_bars(),
    ) }}
),

spread_values as (
    {{ spread_features_sql('source_rows') }}
)

select
    spread_values.pair,
    spread_values.ts_utc,
    {% for column in spread_column_names() -%}
        spread_values.{{ column }}{% if not loop.last %},{% endif %}
    {% endfor %}
from spread_values
where spread_values.is_new
