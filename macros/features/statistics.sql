{#-
    Rolling statistics of a series: mean_wW std_wW skew_wW kurt_wW min_wW max_wW for W in
    var('rolling_windows'), over the W bars t-W+1 .. t of the pair. Also the window sums both the
    statistics and the Bollinger families are computed from (window_deviation_sums_ctes).
    Documented in macros/features/statistics.yml (maths, warm-up, precision and why).
-#}

{#- The output columns, in order: the six metrics of each window of var('rolling_windows'). -#}
{% macro statistics_column_names() -%}
    {%- set names = [] -%}
    {%- for window in var('rolling_windows') -%}
        {%- for metric in ['mean', 'std', 'skew', 'kurt', 'min', 'max'] -%}
            {%- do names.append(metric ~ '_w' ~ window) -%}
        {%- endfor -%}
    {%- endfor -%}
    {{ return(names) }}
{%- endmacro %}


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
    from {{ prefix }}_lags
    offset 0
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


{#-
    CTEs computing the statistics columns of `rows_cte` (pair, ts_utc, is_new and `series`),
    ending in `statistics_values` (pair, ts_utc, is_new, statistics_column_names()...).
    Call it after `with ... as (...),` and select from statistics_values.
-#}
{% macro statistics_ctes(rows_cte, series) -%}
{%- set windows = var('rolling_windows') | map('int') | list -%}
{{ window_deviation_sums_ctes('statistics', rows_cte, series, windows, 4, with_extremes=true) }},

statistics_moments as (
    -- s = mean - y[t] (the shift) and the central moments m2, m3, m4 (divided by W), from the
    -- moments about y[t]: r_k = Σ d^k / W, m2 = r2 - s², m3 = r3 - 3 s r2 + 2 s³,
    -- m4 = r4 - 4 s r3 + 6 s² r2 - 3 s⁴
    select
        statistics_sums.pair,
        statistics_sums.ts_utc,
        statistics_sums.is_new,
        statistics_sums.series_value
        {%- for window in windows %}
        {%- set s = 'statistics_sums.dev_sum_1_w' ~ window ~ ' / ' ~ window ~ '.0' %}
        {%- set r2 = 'statistics_sums.dev_sum_2_w' ~ window ~ ' / ' ~ window ~ '.0' %}
        {%- set r3 = 'statistics_sums.dev_sum_3_w' ~ window ~ ' / ' ~ window ~ '.0' %}
        {%- set r4 = 'statistics_sums.dev_sum_4_w' ~ window ~ ' / ' ~ window ~ '.0' %},
        {{ s }} as shift_w{{ window }},
        -- clamped at 0 against rounding (greatest() alone would turn the warm-up's NULL into 0)
        case
            when statistics_sums.dev_sum_1_w{{ window }} is not null
                then greatest({{ r2 }} - ({{ s }}) * ({{ s }}), 0)
        end as m2_w{{ window }},
        {{ r3 }} - 3 * ({{ s }}) * ({{ r2 }}) + 2 * ({{ s }}) * ({{ s }}) * ({{ s }}) as m3_w{{ window }},
        {{ r4 }} - 4 * ({{ s }}) * ({{ r3 }}) + 6 * ({{ s }}) * ({{ s }}) * ({{ r2 }})
        - 3 * ({{ s }}) * ({{ s }}) * ({{ s }}) * ({{ s }}) as m4_w{{ window }},
        statistics_sums.window_min_w{{ window }},
        statistics_sums.window_max_w{{ window }}
        {%- endfor %}
    from statistics_sums
    offset 0
),

statistics_values as (
    -- m2 = 0 exactly when all W values are equal (every deviation is then exactly 0)
    select
        statistics_moments.pair,
        statistics_moments.ts_utc,
        statistics_moments.is_new
        {%- for window in windows %}
        {%- set m2 = 'statistics_moments.m2_w' ~ window %}
        {%- set m3 = 'statistics_moments.m3_w' ~ window %}
        {%- set m4 = 'statistics_moments.m4_w' ~ window %},
        statistics_moments.series_value + statistics_moments.shift_w{{ window }} as mean_w{{ window }},
        {%- if window >= 2 %}
        sqrt({{ m2 }} * {{ window }}.0 / {{ window - 1 }}.0) as std_w{{ window }},
        {%- else %}
        null::double precision as std_w{{ window }},
        {%- endif %}
        {%- if window >= 3 %}
        sqrt({{ window * (window - 1) }}.0) / {{ window - 2 }}.0
        * {{ m3 }} / nullif({{ m2 }} * sqrt({{ m2 }}), 0) as skew_w{{ window }},
        {%- else %}
        null::double precision as skew_w{{ window }},
        {%- endif %}
        {%- if window >= 4 %}
        {{ window - 1 }}.0 / {{ (window - 2) * (window - 3) }}.0
        * ({{ window + 1 }}.0 * {{ m4 }} / nullif({{ m2 }} * {{ m2 }}, 0) - {{ 3 * (window - 1) }}.0) as kurt_w{{ window }},
        {%- else %}
        null::double precision as kurt_w{{ window }},
        {%- endif %}
        case when statistics_moments.shift_w{{ window }} is not null then statistics_moments.window_min_w{{ window }} end
            as min_w{{ window }},
        case when statistics_moments.shift_w{{ window }} is not null then statistics_moments.window_max_w{{ window }} end
            as max_w{{ window }}
        {%- endfor %}
    from statistics_moments
)
{%- endmacro %}
