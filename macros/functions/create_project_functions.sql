{#- Called by dbt_project.yml's on-run-start: creates (idempotently, `create or replace`)
    every SQL function and aggregate the models use, so a database holding only `raw` builds.
    One line per family; each family's macro lives in its own file beside this one. -#}
{% macro create_project_functions() -%}
    {{ create_smoothing_aggregates() }};
    {{ create_reg_window_start_type() }};
    {{ create_increment_bounds_function() }};
    {{ create_pair_lookup_functions() }}
{%- endmacro %}
