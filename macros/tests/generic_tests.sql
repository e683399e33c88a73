{#- Generic tests of the project (no packages: the dbt hub is out of reach here). -#}

{#- No two rows share the values of `combination_of_columns`. -#}
{% test unique_combination_of_columns(model, combination_of_columns) %}
select
    {{ combination_of_columns | join(', ') }},
    count(*) as copies
from {{ model }}
group by {{ combination_of_columns | join(', ') }}
having count(*) > 1
{% endtest %}


{#- Every row satisfies `expression` (NULLs count as failures unless the expression allows them). -#}
{% test expression_is_true(model, expression, column_name=none) %}
select *
from {{ model }}
where not coalesce({{ expression }}, false)
{% endtest %}


{#- The column is NULL on exactly the first `warmup` bars of every pair and not after,
    except on rows where `null_allowed_when` holds (a formula undefined there, e.g. a flat
    window: the model's YAML says which). Bars are counted per pair in ts_utc order. -#}
{% test warmup_nulls(model, column_name, warmup, null_allowed_when='false') %}
{#- the tested rows' alias: the model's name (a relation's, or the written-rows subquery's) -#}
{%- set restricted = (model | string).startswith('(') -%}
{%- set tested = (model | string).split(' ')[-1] if restricted else model.identifier -%}
{%- set bar_numbers = ref('m1_index') -%}  {#- outside the branch: dbt infers the dependency at parse -#}
with numbered as (
    -- the bar's position in its pair, 1-based. On the rows an incremental build wrote
    -- (macros/tests/written_rows.sql) from m1_index.bar_number, which makes the test local to a
    -- row; on a whole table the row number (no join)
    select
        {{ tested }}.pair,
        {{ tested }}.ts_utc,
        {{ tested }}.{{ column_name }} is null as value_is_null,
        coalesce({{ null_allowed_when }}, false) as null_allowed,
        {%- if restricted %}
        warmup_index.bar_number + 1 as bar_number
    from {{ model }}
    inner join {{ bar_numbers }} as warmup_index
        on {{ tested }}.pair = warmup_index.pair and {{ tested }}.ts_utc = warmup_index.ts_utc
        {%- else %}
        row_number() over (partition by {{ tested }}.pair order by {{ tested }}.ts_utc) as bar_number
    from {{ model }}
        {%- endif %}
)

select
    pair,
    ts_utc,
    bar_number,
    case
        when bar_number <= {{ warmup }} then 'value inside the warm-up of {{ warmup }} bars'
        else 'NULL after the warm-up of {{ warmup }} bars'
    end as failure
from numbered
where
    (bar_number <= {{ warmup }} and not value_is_null)
    or (bar_number > {{ warmup }} and value_is_null and not null_allowed)
{% endtest %}
