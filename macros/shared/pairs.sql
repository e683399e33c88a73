{#- var('pairs') as a list of SQL literals: 'EURGBP', 'EURAUD', ... (python/bqx/pairs.py holds the
    same list, checked by python/tests/test_project.py). -#}
{% macro quoted_pairs() -%}
    {%- for pair in var('pairs') -%}
        '{{ pair }}'{{ ", " if not loop.last }}
    {%- endfor -%}
{%- endmacro %}
