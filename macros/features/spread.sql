{#-
    Spread features (model spread_features), on spread_bps = spread / close × 10⁴ from m1_index:
    the maths lives here once; documented in macros/features/spread.yml.

    Windows count bars of one pair ordered by ts_utc and end at bar t (t included). A window is
    full only when all its W spreads are non-NULL (a missing spread is not skipped: skipping would
    stretch the window over more than W bars); otherwise every column of that window is NULL.
    float8: each frame is re-aggregated from its W values (PostgreSQL has no inverse transition
    for float8 sums), so nothing drifts; stddev_samp uses the Youngs–Cramer update.
-#}

{#- Bars read before the first new bar of an incremental run: the longest window. -#}
{% macro spread_lookback_bars() -%}
    {{ return(var('rolling_windows') | max) }}
{%- endmacro %}


{% macro spread_column_names() -%}
    {%- set names = [] -%}
    {%- for w in var('rolling_windows') -%}
        {%- for metric in ['mean', 'std', 'z', 'min', 'max'] -%}
            {%- do names.append('spread_bps_' ~ metric ~ '_w' ~ w) -%}
        {%- endfor -%}
    {%- endfor -%}
    {{ return(names) }}
{%- endmacro %}


{#- A select over `source` (pair, ts_utc, spread_bps, is_new) giving pair, ts_utc, is_new and
    every column of spread_column_names(). -#}
{% macro spread_features_sql(source) -%}
with spread_windows as (
    select
        bars.pair,
        bars.ts_utc,
        bars.is_new,
        bars.spread_bps,
        {%- for w in var('rolling_windows') %}
        count(bars.spread_bps) over window_{{ w }} as spread_count_w{{ w }},
        avg(bars.spread_bps) over window_{{ w }} as spread_mean_w{{ w }},
        stddev_samp(bars.spread_bps) over window_{{ w }} as spread_std_w{{ w }},
        min(bars.spread_bps) over window_{{ w }} as spread_min_w{{ w }},
        max(bars.spread_bps) over window_{{ w }} as spread_max_w{{ w }}{{ "," if not loop.last }}
        {%- endfor %}
    from {{ source }} as bars
    window
        {%- for w in var('rolling_windows') %}
        window_{{ w }} as (
            partition by bars.pair order by bars.ts_utc
            rows between {{ w - 1 }} preceding and current row
        ){{ "," if not loop.last }}
        {%- endfor %}
)

select
    spread_windows.pair,
    spread_windows.ts_utc,
    spread_windows.is_new,
    {%- for w in var('rolling_windows') %}
    {%- set full = 'spread_windows.spread_count_w' ~ w ~ ' = ' ~ w %}
    case when {{ full }} then spread_windows.spread_mean_w{{ w }} end as spread_bps_mean_w{{ w }},
    {#- a constant window has std 0 exactly (float8 rounding could leave ~1e-17 and a huge z) #}
    {%- set flat = 'spread_windows.spread_min_w' ~ w ~ ' = spread_windows.spread_max_w' ~ w %}
    case
        when {{ full }} and {{ flat }} then 0::double precision
        when {{ full }} then spread_windows.spread_std_w{{ w }}
    end as spread_bps_std_w{{ w }},
    case
        when {{ full }} and not {{ flat }}
            then (spread_windows.spread_bps - spread_windows.spread_mean_w{{ w }})
            / nullif(spread_windows.spread_std_w{{ w }}, 0)
    end as spread_bps_z_w{{ w }},
    case when {{ full }} then spread_windows.spread_min_w{{ w }} end as spread_bps_min_w{{ w }},
    case when {{ full }} then spread_windows.spread_max_w{{ w }} end as spread_bps_max_w{{ w }}{{ "," if not loop.last }}
    {%- endfor %}
from spread_windows
{%- endmacro %}


{#- For the YAML's warmup_nulls tests (null_allowed_when): `column` of the tested row of
    `model_name` is NULL and the W bars of m1_index ending at that row hold a NULL spread.
    The subquery runs only on NULL rows. -#}
{% macro spread_window_has_null(model_name, column, w) -%}
case
    when {{ model_name }}.{{ column }} is null
        then exists (
            select 1
            from (
                select window_bars.spread_bps
                from {{ market_index_relation() }} as window_bars
                where window_bars.pair = {{ model_name }}.pair and window_bars.ts_utc <= {{ model_name }}.ts_utc
                order by window_bars.ts_utc desc
                limit {{ w }}
            ) as last_bars
            where last_bars.spread_bps is null
        )
    else false
end
{%- endmacro %}
