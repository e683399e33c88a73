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
{%- set tested = (model | string).split(' ')[-1] if (model | string).startswith('(') else model.identifier -%}
with numbered as (
    -- the bar's absolute position (m1_index.bar_number, 0-based): the test is local to a row,
    -- so it also holds on the rows an incremental build wrote (macros/tests/written_rows.sql)
    select
        {{ tested }}.pair,
        {{ tested }}.ts_utc,
        {{ tested }}.{{ column_name }} is null as value_is_null,
        coalesce({{ null_allowed_when }}, false) as null_allowed,
        warmup_index.bar_number + 1 as bar_number
    from {{ model }}
    inner join {{ ref('m1_index') }} as warmup_index
        on {{ tested }}.pair = warmup_index.pair and {{ tested }}.ts_utc = warmup_index.ts_utc
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
