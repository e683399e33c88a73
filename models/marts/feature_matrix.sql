{{ config(materialized='view') }}

{#- Every wave-1 feature model, the macro that names its columns (generated from the same vars
    as the model), and the prefix its columns carry here: the families computed on both domains
    say which one (rate_reg_a_w60, bqx_reg_a_w60, ...); the others keep their names. The column
    list is generated at compile time, never read from the database. -#}
{%- set feature_models = [
    {'model': 'bqx', 'columns': bqx_column_names(), 'prefix': ''},
    {'model': 'reg_rate', 'columns': reg_column_names(), 'prefix': 'rate_'},
    {'model': 'reg_bqx', 'columns': reg_column_names(), 'prefix': 'bqx_'},
    {'model': 'bollinger_rate', 'columns': bollinger_column_names(), 'prefix': 'rate_'},
    {'model': 'bollinger_bqx', 'columns': bollinger_column_names(), 'prefix': 'bqx_'},
    {'model': 'statistics_rate', 'columns': statistics_column_names(), 'prefix': 'rate_'},
    {'model': 'statistics_bqx', 'columns': statistics_column_names(), 'prefix': 'bqx_'},
    {'model': 'technical_rate', 'columns': technical_column_names(), 'prefix': 'rate_'},
    {'model': 'technical_bqx', 'columns': technical_column_names(), 'prefix': 'bqx_'},
    {'model': 'volume_features', 'columns': volume_column_names(), 'prefix': ''},
    {'model': 'spread_features', 'columns': spread_column_names(), 'prefix': ''},
    {'model': 'time_features', 'columns': time_column_names(), 'prefix': ''},
    {'model': 'data_quality_features', 'columns': data_quality_column_names(), 'prefix': ''},
] -%}

-- One row per m1_index row (pair, ts_utc); each feature table is joined on its unique index.
-- A view, not a copy: at FX-year scale a second copy of every feature would be tens of GB.
select
    bars.pair,
    bars.ts_utc,
    {% for family in feature_models -%}
        {%- set last_family = loop.last -%}
        {%- for column in family.columns -%}
            {{ family.model }}.{{ column }} as {{ family.prefix ~ column }}{% if not (last_family and loop.last) %},{% endif %}
        {% endfor -%}
    {%- endfor %}
from {{ ref('m1_index') }} as bars
{% for family in feature_models -%}
    left join {{ ref(family.model) }} as {{ family.model }}
        on bars.pair = {{ family.model }}.pair and bars.ts_utc = {{ family.model }}.ts_utc
{% endfor %}
