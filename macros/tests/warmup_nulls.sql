{#-
    The warm-up test of a feature model, one per model (its YAML names it at model level): every
    column is NULL on exactly the first warmup_bars bars of each pair and, after them, only on
    rows where its null_allowed_when holds -- all columns checked in one scan of the model, each
    pair's bars numbered once. The columns, warm-ups and NULL rules come from the registry
    (feature_model_columns, macros/catalog/), computed from the vars: a window added to a var is
    checked with the models it builds. A failing row is a bar (pair, ts_utc, bar_position) with
    every column wrong there.

    A NULL rule is evaluated only on a NULL after the warm-up (some read other rows: the volume
    rules look at the window's bars in m1_index), never on the warm-up's NULLs.

    row_filter: a SQL predicate over pair, ts_utc and bar_position (the bar's position in its
    pair, 1 = first) restricting the rows checked; bars are still numbered over every row of the
    pair, so a row's verdict does not depend on the filter. Default: every row.

    On the rows an incremental build wrote (macros/tests/written_rows.sql: `model` is then the
    subquery of those rows, aliased as the model) a warm-up count over the table is impossible
    and a window over its keys would read every row. The test then checks what the written rows
    can show, with the same verdict per row as on the whole table: each written row against its
    absolute position, m1_index.bar_number + 1 (the position a full build gives it: m1_index has
    one row per bar and every feature model one row per m1_index bar), joined by the unique
    index on (pair, ts_utc); a written row without its bar in m1_index fails, and so does a bar
    of m1_index inside the ranges written that has no row (a row the build skipped). Rows
    outside the written ranges were checked by the build that wrote them; `--full-tests`, a full
    refresh or a plain `dbt test` checks every row.
-#}
{% test warmup_nulls(model, row_filter=none) %}
{#- at parse time `model` is not the model's relation yet, and the columns are not needed -#}
{%- set written_only = execute and (model | string).strip().startswith('(') -%}
{%- set model_name = ((model | string).split(' ')[-1] if written_only else model.identifier) if execute else 'model_rows' -%}
{%- set columns = feature_model_columns(model_name) if execute else [] -%}
{#- not ref(): a test that ref()s m1_index would be selected whenever m1_index is (macros/shared) -#}
{%- set bar_positions = market_index_relation() -%}
{#- written rows: materialized, so each row's position is looked up once (inlined, the lookup
    ran once per column that reads bar_position: 14 s instead of 1 s for a day of reg_bqx) -#}
with numbered_bars as {{ 'materialized ' if written_only }}(
    {%- if written_only %}
    -- the written rows' subquery is aliased as the model already
    select
        {{ model_name }}.*,
        -- the bar's absolute position in its pair (m1_index.bar_number is 0-based); NULL when
        -- m1_index has no such bar. A lookup per written row on m1_index's unique index: as a
        -- join, the planner (over-estimating the written rows) hashed all of m1_index instead
        -- (3 s at 28 pairs x 1 month for a day of rows, growing with the history)
        (
            select positions.bar_number
            from {{ bar_positions }} as positions
            where positions.pair = {{ model_name }}.pair and positions.ts_utc = {{ model_name }}.ts_utc
        ) + 1 as bar_position
    from {{ model }}
    {%- else %}
    select
        model_rows.*,
        row_number() over (partition by model_rows.pair order by model_rows.ts_utc) as bar_position
    from {{ model }} as model_rows
    {%- endif %}
),

bar_failures as (
    -- named as the model: the NULL rules qualify its columns by the model's name
    select
        {{ model_name }}.pair,
        {{ model_name }}.ts_utc,
        {{ model_name }}.bar_position,
        {%- if written_only %}
        case when {{ model_name }}.bar_position is null then 'a row without its bar in m1_index' else
        {%- endif %}
        concat_ws(
            '; '
            {%- for column in columns %},
            case
                when {{ model_name }}.bar_position <= {{ column.warmup_bars }}
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
        )
        {%- if written_only %}
        end
        {%- endif %} as failures
    from numbered_bars as {{ model_name }}
    -- only the rows that can fail: the verdict above is '' for a row past every warm-up without a
    -- NULL, and that is nearly every row, so they skip the per-column verdicts (half the test's
    -- time on a pair-year of reg_bqx). num_nulls() takes at most 100 arguments: in chunks.
    where (
        {{ model_name }}.bar_position is null
        or {{ model_name }}.bar_position <= {{ columns | map(attribute='warmup_bars') | max | default(0) }}
        {%- for chunk in columns | batch(90) %}
        or num_nulls({% for column in chunk %}{{ model_name }}.{{ column.name }}{{ ', ' if not loop.last }}{% endfor %}) > 0
        {%- endfor %}
    )
    {%- if row_filter %}
    and ({{ row_filter }})
    {%- endif %}
)
{%- if written_only %},

skipped_bars as (
    -- bars of m1_index inside the ranges this build wrote, without a row
    select
        bars.pair,
        bars.ts_utc,
        bars.bar_number + 1 as bar_position,
        'no row of {{ model_name }} for this bar of m1_index' as failures
    from build_state.model_pairs as written_ranges
    inner join {{ bar_positions }} as bars
        on
            written_ranges.pair = bars.pair
            and bars.ts_utc between written_ranges.rewrote_from_ts and written_ranges.rewrote_to_ts
    where
        written_ranges.model = '{{ model_name }}'
        and written_ranges.invocation_id = '{{ invocation_id }}'
        and not exists (
            select from {{ model }}
            where {{ model_name }}.pair = bars.pair and {{ model_name }}.ts_utc = bars.ts_utc
        )
)
{%- endif %}

select
    bar_failures.pair,
    bar_failures.ts_utc,
    bar_failures.bar_position,
    bar_failures.failures
from bar_failures
where bar_failures.failures <> ''
{%- if written_only %}

union all

select
    skipped_bars.pair,
    skipped_bars.ts_utc,
    skipped_bars.bar_position,
    skipped_bars.failures
from skipped_bars
{%- endif %}
{% endtest %}
