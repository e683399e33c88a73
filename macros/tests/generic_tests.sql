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


{#- The column is NULL exactly on each pair's last `bars` rows and nowhere else: a target at t
    reads the `bars` bars after t, so it exists exactly where they do. One scan of the model. -#}
{% test null_on_last_bars(model, column_name, bars) %}
with numbered_from_the_end as (
    select
        pair,
        ts_utc,
        {{ column_name }} is null as value_is_null,
        row_number() over (partition by pair order by ts_utc desc) as bars_to_the_end
    from {{ model }}
)

select
    pair,
    ts_utc,
    bars_to_the_end,
    case
        when value_is_null then 'NULL with {{ bars }} bars or more after it'
        else 'a value with fewer than {{ bars }} bars after it'
    end as failure
from numbered_from_the_end
where value_is_null <> (bars_to_the_end <= {{ bars }})
{% endtest %}
