{#- A date or timestamp given in vars, read as UTC whatever the session's TimeZone. -#}
{% macro utc_timestamp(value) -%}
    (timestamp '{{ value }}' at time zone 'UTC')
{%- endmacro %}
