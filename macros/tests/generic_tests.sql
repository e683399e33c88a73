{#- Generic tests of the project (no packages: the dbt hub is out of reach here). -#}

{#- No two rows share the values of `combination_of_columns`. Where a valid unique index on
    exactly those columns (no expression, no predicate) guards the table, that index is the check:
    PostgreSQL refuses any duplicate it would find, so the test reads the catalog and skips the
    scan (a one-time filter: the scan below it never starts). At 6 months the scan took 100-300 s
    per model and could not fail. Without such an index (a view, an index dropped or left invalid
    by a failed build) the test scans every row; on an incremental build it scans the rows the build
    wrote (get_where_subquery hands it a subquery, not a table). Rows with a NULL key are not
    guarded by a unique index; the keys' not_null tests catch them. -#}
{% test unique_combination_of_columns(model, combination_of_columns) %}
{%- set key_columns = combination_of_columns | map('lower') | unique | sort | list -%}
{%- set guarded = model is not string -%}
{%- if guarded %}
with guarding_unique_index as (
    select index_entry.indexrelid
    from pg_catalog.pg_index as index_entry
    inner join pg_catalog.pg_class as indexed_table on index_entry.indrelid = indexed_table.oid
    inner join pg_catalog.pg_namespace as table_schema on indexed_table.relnamespace = table_schema.oid
    where
        table_schema.nspname = '{{ model.schema }}'
        and indexed_table.relname = '{{ model.identifier }}'
        and index_entry.indisunique
        and index_entry.indisvalid
        and index_entry.indpred is null
        and index_entry.indexprs is null
        and index_entry.indnkeyatts = {{ key_columns | length }}
        and (
            select array_agg(key_column.attname::text order by key_column.attname::text)
            from pg_catalog.pg_attribute as key_column
            where
                key_column.attrelid = indexed_table.oid
                and key_column.attnum = any(index_entry.indkey::int2[])
        ) = array[{% for column in key_columns %}'{{ column }}'{{ ", " if not loop.last }}{% endfor %}]::text[]
)
{%- endif %}

select
    {{ combination_of_columns | join(', ') }},
    count(*) as copies
from {{ model }}
{%- if guarded %}
where not exists (select from guarding_unique_index)
{%- endif %}
group by {{ combination_of_columns | join(', ') }}
having count(*) > 1
{% endtest %}


{#- Every row satisfies `expression` (NULLs count as failures unless the expression allows them). -#}
{% test expression_is_true(model, expression, column_name=none) %}
select *
from {{ model }}
where not coalesce({{ expression }}, false)
{% endtest %}


{#- Each column of `bars_by_column` (a mapping column -> bars) is NULL exactly on each pair's last
    `bars` rows and nowhere else: a target at t reads the `bars` bars after t, so it exists exactly
    where they do. One scan of the rows tested for every column (a test per column read the table
    once each: four scans of the targets). A row with the longest `bars` or more tested rows after
    it must hold every value, so only its NULLs are judged; for the others (at most that many per
    pair and tested range) the bars after them are counted in m1_index by position (bar_number),
    since on an incremental build only the rewritten range is tested and a correction in the
    middle of the data rewrites a range that ends before the pair's end. A row with fewer than a
    column's `bars` tested rows after it is judged by m1_index for that column; with more, it must
    hold a value. A failing row names every column wrong there. -#}
{% test null_on_last_bars(model, bars_by_column) %}
{#- not ref(): a test that ref()s m1_index would be selected whenever m1_index is (macros/shared) -#}
{%- set bar_positions = market_index_relation() -%}
{%- set columns = bars_by_column | list -%}
{%- set longest = bars_by_column.values() | max -%}
{%- set horizons = bars_by_column.values() | unique | sort | list -%}
with numbered_from_the_end as (
    select
        pair,
        ts_utc,
        {%- for column in columns %}
        {{ column }} is null as {{ column }}_is_null,
        {%- endfor %}
        row_number() over (partition by pair order by ts_utc desc) as tested_rows_from_the_end
    from {{ model }}
),

rows_to_judge as (
    -- far from the end only a NULL can be wrong (every horizon's bars follow in the rows tested);
    -- near it every row is judged, with its position in m1_index. That position is a lookup per
    -- row on m1_index's unique index, not a join: the planner, which cannot know that at most
    -- {{ longest }} rows per pair are near the end, hashed all of m1_index once per horizon
    -- instead (38 s of a 49 s test at FX-year)
    select
        numbered_from_the_end.pair,
        numbered_from_the_end.ts_utc,
        {%- for column in columns %}
        numbered_from_the_end.{{ column }}_is_null,
        {%- endfor %}
        numbered_from_the_end.tested_rows_from_the_end,
        case
            when numbered_from_the_end.tested_rows_from_the_end <= {{ longest }} then (
                select this_bar.bar_number
                from {{ bar_positions }} as this_bar
                where this_bar.pair = numbered_from_the_end.pair and this_bar.ts_utc = numbered_from_the_end.ts_utc
            )
        end as bar_number
    from numbered_from_the_end
    where
        numbered_from_the_end.tested_rows_from_the_end <= {{ longest }}
        {%- for column in columns %}
        or numbered_from_the_end.{{ column }}_is_null
        {%- endfor %}
),

judged_rows as (
    select
        rows_to_judge.pair,
        rows_to_judge.ts_utc,
        {%- for column in columns %}
        rows_to_judge.{{ column }}_is_null,
        {%- endfor %}
        -- near the end, a row without its bar in m1_index (an orphan row) is a failure of its own
        rows_to_judge.tested_rows_from_the_end <= {{ longest }} and rows_to_judge.bar_number is null as without_bar
        {%- for bars in horizons %},
        rows_to_judge.tested_rows_from_the_end <= {{ bars }} and not exists (
            select
            from {{ bar_positions }} as bars_after
            where bars_after.pair = rows_to_judge.pair and bars_after.bar_number = rows_to_judge.bar_number + {{ bars }}
        ) as fewer_than_{{ bars }}_after
        {%- endfor %}
    from rows_to_judge
),

row_failures as (
    select
        pair,
        ts_utc,
        case
            when without_bar then 'no bar of m1_index at this minute'
            else concat_ws(
                '; '
                {%- for column, bars in bars_by_column.items() %},
                case
                    when {{ column }}_is_null and not fewer_than_{{ bars }}_after
                        then '{{ column }}: NULL with {{ bars }} bars or more after it'
                    when not {{ column }}_is_null and fewer_than_{{ bars }}_after
                        then '{{ column }}: a value with fewer than {{ bars }} bars after it'
                end
                {%- endfor %}
            )
        end as failure
    from judged_rows
)

select
    pair,
    ts_utc,
    failure
from row_failures
where failure <> ''
{% endtest %}
