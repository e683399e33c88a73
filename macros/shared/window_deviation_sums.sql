{#- Window sums of powers of deviations from the current value: shared by the statistics,
    Bollinger and spread families (documented in macros/shared/shared.yml). -#}

{#-
    CTEs `<prefix>_lags`, `<prefix>_segments`, `<prefix>_sums` over `rows_cte` (columns pair,
    ts_utc, is_new and `series`). `<prefix>_sums` holds pair, ts_utc, is_new, series_value (y[t])
    and, for each W of `windows` and k = 1 .. max_power, dev_sum_k_wW = Σ_{j=1}^{W-1} (y[t-j] - y[t])^k
    (NULL unless the W values y[t-W+1] .. y[t] are all non-NULL), plus window_min_wW /
    window_max_wW when `with_extremes` (meaningful only where dev_sum_1_wW is not NULL).

    Why deviations from y[t]: they are exact in float8 for nearby values (Sterbenz) and of the
    window's own scale, so the moments derived from them lose no digits to the series' level
    (raw power sums at the rate scale, y ~ 100 and sigma ~ 0.01, cancel ~8 digits). Every term
    of a window shares the same reference y[t], which a window aggregate cannot express (its
    argument is evaluated per input row), hence explicit lags: one lag per bar back, shared by
    all windows; sums over consecutive segments of lags, then per window the sum of its segments.
    O(max W) per row, cheap float8 operations; the `offset 0` keeps the planner from inlining
    the segments into every window's expression (which would recompute them per window).
-#}
{% macro window_deviation_sums_ctes(prefix, rows_cte, series, windows, max_power, with_extremes=false) -%}
{%- if max_power < 1 or max_power > 4 -%}
    {{ exceptions.raise_compiler_error("window_deviation_sums_ctes: max_power must be 1 .. 4, got " ~ max_power) }}
{%- endif -%}
{%- set windows = windows | map('int') | unique | sort | list -%}
{%- set longest = windows | last -%}
{%- set segments = [] -%}
{%- set ns = namespace(first_lag=1) -%}
{%- for window in windows -%}
    {%- do segments.append({'window': window, 'lags': range(ns.first_lag, window) | list}) -%}
    {%- set ns.first_lag = window -%}
{%- endfor -%}
{{ prefix }}_lags as (
    -- y[t-j] and its deviation d_j = y[t-j] - y[t] (and d_j squared) for j = 1 .. {{ longest - 1 }}
    select
        lag_rows.pair,
        lag_rows.ts_utc,
        lag_rows.is_new,
        lag_rows.{{ series }} as series_value
        {%- for lag in range(1, longest) %},
        {%- if with_extremes %}
        lag(lag_rows.{{ series }}, {{ lag }}) over bars_in_order as lag_value_{{ lag }},
        {%- endif %}
        lag(lag_rows.{{ series }}, {{ lag }}) over bars_in_order - lag_rows.{{ series }} as deviation_{{ lag }}
        {%- if max_power >= 2 %},
        (lag(lag_rows.{{ series }}, {{ lag }}) over bars_in_order - lag_rows.{{ series }})
        * (lag(lag_rows.{{ series }}, {{ lag }}) over bars_in_order - lag_rows.{{ series }}) as deviation_sq_{{ lag }}
        {%- endif %}
        {%- endfor %}
    from {{ rows_cte }} as lag_rows
    window bars_in_order as (partition by lag_rows.pair order by lag_rows.ts_utc)
),

{{ prefix }}_segments as (
    -- per segment of lags between consecutive windows: sums of d_j^k, and extremes of y
    select
        {{ prefix }}_lags.pair,
        {{ prefix }}_lags.ts_utc,
        {{ prefix }}_lags.is_new,
        {{ prefix }}_lags.series_value
        {%- for segment in segments %}
        {%- set lags = segment.lags %}
        {%- set tag = 'w' ~ segment.window %}
        {%- if lags | length == 0 %},
        -- a window of one bar: no deviation; y[t] - y[t] keeps its NULL
        {{ prefix }}_lags.series_value - {{ prefix }}_lags.series_value as segment_sum_1_{{ tag }}
        {%- for power in range(2, max_power + 1) %},
        0::double precision as segment_sum_{{ power }}_{{ tag }}
        {%- endfor %}
        {%- else %}
        {%- for power in range(1, max_power + 1) %},
        {% for lag in lags -%}
        {%- if power == 1 -%}
        {{ prefix }}_lags.deviation_{{ lag }}
        {%- elif power == 2 -%}
        {{ prefix }}_lags.deviation_sq_{{ lag }}
        {%- elif power == 3 -%}
        {{ prefix }}_lags.deviation_sq_{{ lag }} * {{ prefix }}_lags.deviation_{{ lag }}
        {%- else -%}
        {{ prefix }}_lags.deviation_sq_{{ lag }} * {{ prefix }}_lags.deviation_sq_{{ lag }}
        {%- endif %}{{ " + " if not loop.last }}
        {%- endfor %} as segment_sum_{{ power }}_{{ tag }}
        {%- endfor %}
        {%- endif %}
        {%- if with_extremes %}
        {%- set qualified = [prefix ~ '_lags.series_value'] if loop.first else [] %}
        {%- for lag in lags %}{% do qualified.append(prefix ~ '_lags.lag_value_' ~ lag) %}{% endfor %},
        least({{ qualified | join(', ') }}) as segment_min_{{ tag }},
        greatest({{ qualified | join(', ') }}) as segment_max_{{ tag }}
        {%- endif %}
        {%- endfor %}
        {{- planner_fence_column(prefix ~ '_lags') }}
    from {{ prefix }}_lags
    {{ planner_fence() }}
),

{{ prefix }}_sums as (
    -- per window: the sums of its segments
    select
        {{ prefix }}_segments.pair,
        {{ prefix }}_segments.ts_utc,
        {{ prefix }}_segments.is_new,
        {{ prefix }}_segments.series_value
        {%- for segment in segments %}
        {%- set covered = segments[:loop.index] %}
        {%- for power in range(1, max_power + 1) %},
        {% for part in covered -%}
        {{ prefix }}_segments.segment_sum_{{ power }}_w{{ part.window }}{{ " + " if not loop.last }}
        {%- endfor %} as dev_sum_{{ power }}_w{{ segment.window }}
        {%- endfor %}
        {%- if with_extremes %},
        least(
            {%- for part in covered %}{{ prefix }}_segments.segment_min_w{{ part.window }}{{ ", " if not loop.last }}{% endfor -%}
        ) as window_min_w{{ segment.window }},
        greatest(
            {%- for part in covered %}{{ prefix }}_segments.segment_max_w{{ part.window }}{{ ", " if not loop.last }}{% endfor -%}
        ) as window_max_w{{ segment.window }}
        {%- endif %}
        {%- endfor %}
    from {{ prefix }}_segments
)
{%- endmacro %}
