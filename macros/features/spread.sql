{#-
    Spread features (model spread_features), on spread_bps = spread / close × 10⁴ from m1_index:
    the maths lives here once; documented in macros/features/spread.yml.

    Windows count bars of one pair ordered by ts_utc and end at bar t (t included). A window is
    full only when all its W spreads are non-NULL (a missing spread is not skipped: skipping would
    stretch the window over more than W bars); otherwise every column of that window is NULL.
    float8 on exact deviations from the current value (see spread_features_sql).
-#}

{#- Bars read before the first new bar of an incremental run: the longest window. -#}
{% macro spread_lookback_bars() -%}
    {{ return(var('rolling_windows') | max) }}
{%- endmacro %}


{% macro spread_column_names() -%}
    {{ return(spread_columns() | map(attribute='name') | list) }}
{%- endmacro %}


{#- The column specs (macros/catalog/feature_columns.sql) of spread_features: five metrics per
    window of var('rolling_windows'). -#}
{% macro spread_columns(domain=none) -%}
    {%- set has_null = 'one of the {w} spreads is NULL' -%}
    {%- set metrics = [
        {'name': 'spread_bps_mean_w{w}', 'template': 'Mean of spread_bps (spread / close × 10⁴) over the {w}
            bars t-{w1} ... t (window {w} bars, var rolling_windows).',
            'null_when': has_null, 'null_allowed_when': '{null_sql}'},
        {'name': 'spread_bps_std_w{w}', 'template': 'Sample standard deviation (ddof 1) of spread_bps over bars
            t-{w1} ... t; exactly 0 when the window is constant (min = max).',
            'null_when': has_null, 'null_allowed_when': 'spread_bps_mean_w{w} is null'},
        {'name': 'spread_bps_z_w{w}', 'template': '(spread_bps[t] - spread_bps_mean_w{w}) /
            spread_bps_std_w{w}.',
            'null_when': has_null ~ ', or when the window is constant (std 0)',
            'null_allowed_when': 'spread_bps_mean_w{w} is null or spread_bps_std_w{w} = 0'},
        {'name': 'spread_bps_min_w{w}', 'template': 'Smallest spread_bps of bars t-{w1} ... t (exact).',
            'null_when': has_null, 'null_allowed_when': 'spread_bps_mean_w{w} is null'},
        {'name': 'spread_bps_max_w{w}', 'template': 'Largest spread_bps of bars t-{w1} ... t (exact).',
            'null_when': has_null, 'null_allowed_when': 'spread_bps_mean_w{w} is null'},
    ] -%}
    {%- set columns = [] -%}
    {%- set windows = var('rolling_windows') | map('int') | list -%}
    {%- for window in windows -%}
        {%- set shorter = windows | select('lt', window) | list -%}
        {%- do columns.extend(windowed_columns(
            metrics, [window], feature_series(none),
            'float8 on exact deviations from spread_bps[t], within 1e-9 of NumPy on each window (measured
            ~1e-14 of the column\'s largest |value|)',
            values={'null_sql': spread_window_has_null(
                'spread_features', 'spread_bps_mean_w' ~ window, window,
                implied_by='spread_bps_mean_w' ~ shorter | max if shorter else none)},
        )) -%}
    {%- endfor -%}
    {{ return(columns) }}
{%- endmacro %}


{#- A select over `source` (pair, ts_utc, spread_bps, is_new) giving pair, ts_utc, is_new and
    every column of spread_column_names().

    float8 on the deviations d_j = spread_bps[t−j] − spread_bps[t] (window_deviation_sums_ctes of
    macros/shared/window_deviation_sums.sql: one lag per bar back, shared by every window, summed per
    segment between consecutive windows): O(max W) cheap additions per row, where float8
    avg/stddev/min/max over moving frames re-aggregate all W values for every row, window and
    aggregate (~900 steps per row). A NULL spread in the window makes its deviation sum NULL,
    hence the whole window. Each row depends only on its own W values (no running sum), so an
    incremental run is bit-identical to a full build. -#}
{% macro spread_features_sql(source) -%}
{%- set windows = var('rolling_windows') | map('int') | list -%}
with {{ window_deviation_sums_ctes('spread', source, 'spread_bps', windows, 2, with_extremes=true) }},

spread_moments as (
    -- s = mean − y[t] and the variance about the mean m2 = Σd²/W − s² (divided by W),
    -- clamped at 0 against rounding (only where the window is full: greatest() ignores NULL)
    select
        spread_sums.pair,
        spread_sums.ts_utc,
        spread_sums.is_new,
        spread_sums.series_value
        {%- for w in windows %}
        {%- set shift = 'spread_sums.dev_sum_1_w' ~ w ~ ' / ' ~ w ~ '.0' %},
        {{ shift }} as shift_w{{ w }},
        case
            when spread_sums.dev_sum_1_w{{ w }} is not null
                then greatest(spread_sums.dev_sum_2_w{{ w }} / {{ w }}.0 - ({{ shift }}) * ({{ shift }}), 0)
        end as m2_w{{ w }},
        spread_sums.window_min_w{{ w }},
        spread_sums.window_max_w{{ w }}
        {%- endfor %}
        {{- planner_fence_column('spread_sums') }}
    from spread_sums
    {{ planner_fence('spread_sums') }}
)

select
    spread_moments.pair,
    spread_moments.ts_utc,
    spread_moments.is_new,
    {%- for w in windows %}
    {%- set full = 'spread_moments.shift_w' ~ w ~ ' is not null' %}
    {#- a constant window has std 0 exactly (every deviation is exactly 0) #}
    {%- set flat = 'spread_moments.window_min_w' ~ w ~ ' = spread_moments.window_max_w' ~ w %}
    {%- set std = 'sqrt(spread_moments.m2_w' ~ w ~ ' * ' ~ w ~ '.0 / ' ~ (w - 1) ~ '.0)' %}
    spread_moments.series_value + spread_moments.shift_w{{ w }} as spread_bps_mean_w{{ w }},
    case
        when {{ full }} and {{ flat }} then 0::double precision
        when {{ full }} then {{ std }}
    end as spread_bps_std_w{{ w }},
    -- (y[t] − mean) / std = −s / std
    case
        when {{ full }} and not {{ flat }}
            then -spread_moments.shift_w{{ w }} / nullif({{ std }}, 0)
    end as spread_bps_z_w{{ w }},
    case when {{ full }} then spread_moments.window_min_w{{ w }} end as spread_bps_min_w{{ w }},
    case when {{ full }} then spread_moments.window_max_w{{ w }} end as spread_bps_max_w{{ w }}{{ "," if not loop.last }}
    {%- endfor %}
from spread_moments
{%- endmacro %}


{#- For the warm-up test (null_allowed_when of spread_columns()): `column` of the tested row of
    `model_name` is NULL and the W bars of m1_index ending at that row hold a NULL spread.
    `implied_by`: the mean of the next shorter window, whose NULL on the same row (past its
    warm-up, so a NULL spread among its bars, which its own rule checks there) lies in this
    window too: one lookup per row instead of one per window where every spread is NULL (files
    without spreads, such as HistData's). The subquery runs only on NULL rows. -#}
{% macro spread_window_has_null(model_name, column, w, implied_by=none) -%}
case
    when {{ model_name }}.{{ column }} is null
        then
            {%- if implied_by %} case when {{ model_name }}.{{ implied_by }} is null then true else{% endif %}
            {{ last_bars_exist(model_name, w, ['spread_bps'], 'last_bars.spread_bps is null') }}
            {%- if implied_by %} end{% endif %}
    else false
end
{%- endmacro %}
