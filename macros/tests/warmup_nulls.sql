{#-
    The warm-up test of a feature model, one per model (its YAML names it at model level): every
    column is NULL on exactly the first warmup_bars bars of each pair and, after them, only on
    rows where its null_allowed_when holds -- all columns checked in one scan of the model, each
    pair's bars numbered once. The columns, warm-ups and NULL rules come from the registry
    (feature_model_columns, macros/catalog/), computed from the vars: a window added to a var is
    checked with the models it builds. A failing row is a bar (pair, ts_utc, bar_number) with
    every column wrong there.

    A NULL rule is evaluated only on a NULL after the warm-up (some read other rows: the volume
    rules look at the window's bars in m1_index), never on the warm-up's NULLs.

    row_filter: a SQL predicate over pair, ts_utc and bar_number (the bar's position in its pair,
    1 = first) restricting the rows checked; bars are still numbered over every row of the pair,
    so a row's verdict does not depend on the filter. Default: every row. A later change can pass
    the rows an incremental run wrote (e.g. "ts_utc >= '<its first new bar>'"): only their values
    are then checked (the numbering still reads the pairs' keys).
-#}
{% test warmup_nulls(model, row_filter=none) %}
{#- at parse time `model` is not the model's relation yet, and the columns are not needed -#}
{%- set columns = feature_model_columns(model.identifier) if execute else [] -%}
{%- set model_name = model.identifier if execute else 'model_rows' -%}
with numbered_bars as (
    select
        model_rows.*,
        row_number() over (partition by model_rows.pair order by model_rows.ts_utc) as bar_number
    from {{ model }} as model_rows
),

bar_failures as (
    -- named as the model: the NULL rules qualify its columns by the model's name
    select
        {{ model_name }}.pair,
        {{ model_name }}.ts_utc,
        {{ model_name }}.bar_number,
        concat_ws(
            '; '
            {%- for column in columns %},
            case
                when {{ model_name }}.bar_number <= {{ column.warmup_bars }}
                    then case
                        when {{ model_name }}.{{ column.name }} is not null
                            then '{{ column.name }}: a value inside its warm-up of {{ column.warmup_bars }} bars'
                    end
                when {{ model_name }}.{{ column.name }} is null
                    {%- if column.null_allowed_when %}
                    and not coalesce({{ column.null_allowed_when }}, false)
                    {%- endif %}
                    then '{{ column.name }}: NULL after its warm-up of {{ column.warmup_bars }} bars'
            end
            {%- endfor %}
        ) as failures
    from numbered_bars as {{ model_name }}
    {%- if row_filter %}
    where {{ row_filter }}
    {%- endif %}
)

select
    bar_failures.pair,
    bar_failures.ts_utc,
    bar_failures.bar_number,
    bar_failures.failures
from bar_failures
where bar_failures.failures <> ''
{% endtest %}
