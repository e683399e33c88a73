{#- Models land in exactly the schema they name (staging, features, marts), not in
    dbt's default "<target schema>_<custom schema>", so users and Python find them there. -#}
{% macro generate_schema_name(custom_schema_name, node) -%}
    {%- if custom_schema_name is none -%}
        {{ target.schema }}
    {%- else -%}
        {{ custom_schema_name | trim }}
    {%- endif -%}
{%- endmacro %}
