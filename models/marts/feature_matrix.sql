{{ config(materialized='view') }}

{#- Every feature model of the registry (feature_families(), macros/catalog/), its columns
    (generated from the same vars as the model) and the prefix they carry here: the families
    computed on both domains say which one (rate_reg_a_w60, bqx_reg_a_w60, ...); the others keep
    their names. The column list is generated at compile time, never read from the database. -#}
{%- set matrix_models = [] -%}
{%- for entry in feature_models() -%}
    {%- do matrix_models.append({'model': entry.model, 'columns': entry.column_names(), 'prefix': entry.prefix}) -%}
{%- endfor -%}

-- One row per m1_index row (pair, ts_utc); each feature table is joined on its unique index.
-- A view, not a copy: at FX-year scale a second copy of every feature would be tens of GB.
select
    bars.pair,
    bars.ts_utc,
    {% for family in matrix_models -%}
        {%- set last_family = loop.last -%}
        {%- for column in family.columns -%}
            {{ family.model }}.{{ column }} as {{ family.prefix ~ column }}{% if not (last_family and loop.last) %},{% endif %}
        {% endfor -%}
    {%- endfor %}
from {{ ref('m1_index') }} as bars
{% for family in matrix_models -%}
    left join {{ ref(family.model) }} as {{ family.model }}
        on bars.pair = {{ family.model }}.pair and bars.ts_utc = {{ family.model }}.ts_utc
{% endfor %}
