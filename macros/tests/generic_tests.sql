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
    reads the `bars` bars after t, so it exists exactly where they do. One scan of the rows tested:
    a row with `bars` or more tested rows after it must hold a value; for the others (at most
    `bars` per pair and tested range) the bars after them are counted in m1_index by position
    (bar_number), since on an incremental build only the rewritten range is tested and a
    correction in the middle of the data rewrites a range that ends before the pair's end. -#}
{% test null_on_last_bars(model, column_name, bars) %}
{#- not ref(): a test that ref()s m1_index would be selected whenever m1_index is (macros/shared) -#}
{%- set bar_positions = market_index_relation() -%}
with numbered_from_the_end as (
    select
        pair,
        ts_utc,
        {{ column_name }} is null as value_is_null,
        row_number() over (partition by pair order by ts_utc desc) as tested_rows_from_the_end
    from {{ model }}
),

near_the_end as (
    select
        numbered_from_the_end.pair,
        numbered_from_the_end.ts_utc,
        numbered_from_the_end.value_is_null,
        -- NULL: the row has no bar in m1_index (an orphan row: a failure of its own)
        case when this_bar.pair is not null then bars_after.bar_number is null end as fewer_bars_after
    from numbered_from_the_end
    left join {{ bar_positions }} as this_bar
        on
            numbered_from_the_end.pair = this_bar.pair
            and numbered_from_the_end.ts_utc = this_bar.ts_utc
    left join {{ bar_positions }} as bars_after
        on
            this_bar.pair = bars_after.pair
            and bars_after.bar_number = this_bar.bar_number + {{ bars }}
    where numbered_from_the_end.tested_rows_from_the_end <= {{ bars }}
),

judged_rows as (
    select
        pair,
        ts_utc,
        value_is_null,
        false as fewer_bars_after
    from numbered_from_the_end
    where tested_rows_from_the_end > {{ bars }}
    union all
    select
        pair,
        ts_utc,
        value_is_null,
        fewer_bars_after
    from near_the_end
)

select
    pair,
    ts_utc,
    case
        when fewer_bars_after is null then 'no bar of m1_index at this minute'
        when value_is_null then 'NULL with {{ bars }} bars or more after it'
        else 'a value with fewer than {{ bars }} bars after it'
    end as failure
from judged_rows
where fewer_bars_after is null or value_is_null <> fewer_bars_after
{% endtest %}
