{#- `dbt run-operation print_feature_catalog [--vars ...]`: the catalog (feature_catalog()) as one
    line of JSON after the marker, as dbt itself evaluates it; python/bqx/catalog.py evaluates the
    same macros in-process, and python/tests/test_catalog.py checks that the two agree. -#}
{% macro print_feature_catalog() -%}
    {%- do print('feature_catalog: ' ~ tojson(feature_catalog())) -%}
{%- endmacro %}
