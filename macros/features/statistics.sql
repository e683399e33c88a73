{#-
    Rolling statistics of a series: mean_wW std_wW skew_wW kurt_wW min_wW max_wW for W in
    var('rolling_windows'), over the W bars t-W+1 .. t of the pair, from the window sums of
    window_deviation_sums_ctes (macros/shared/window_deviation_sums.sql). Documented in
    macros/features/statistics.yml (maths, warm-up, precision and why).
-#}

{#- The output columns, in order: the six metrics of each window of var('rolling_windows'). -#}
{% macro statistics_column_names() -%}
    {{ return(statistics_columns('rate') | map(attribute='name') | list) }}
{%- endmacro %}


{#- The column specs (macros/catalog/feature_columns.sql) of statistics_rate / statistics_bqx. -#}
{% macro statistics_columns(domain) -%}
    {%- set flat_when = 'the window is flat (all {w} values equal: variance 0, std_w{w} = 0)' -%}
    {%- set metrics = [
        {'name': 'mean_w{w}', 'template': 'Mean of {series} over the {w} bars t-{w1} ... t (window {w} bars,
            var rolling_windows).'},
        {'name': 'std_w{w}', 'template': 'Sample standard deviation (ddof 1) of the same {w} values:
            sqrt(Σ(y − mean)² / {w1}); exactly 0 for a flat window.'},
        {'name': 'skew_w{w}', 'template': 'Skewness, adjusted Fisher–Pearson (pandas\' rolling skew):
            sqrt(n(n−1))/(n−2) · m3 / m2^1.5 with n = {w} and m_k = Σ(y − mean)^k / n over the same {w} values
            of {series}.', 'null_when': flat_when, 'null_allowed_when': 'std_w{w} = 0'},
        {'name': 'kurt_w{w}', 'template': 'Excess kurtosis, bias-corrected (pandas\' rolling kurt):
            (n−1)/((n−2)(n−3)) · ((n+1)·m4/m2² − 3(n−1)) with n = {w}, m_k as for skew_w{w}.',
            'null_when': flat_when, 'null_allowed_when': 'std_w{w} = 0'},
        {'name': 'min_w{w}', 'template': 'Smallest of the same {w} values (exact).'},
        {'name': 'max_w{w}', 'template': 'Largest of the same {w} values (exact).'},
    ] -%}
    {{ return(windowed_columns(
        metrics, var('rolling_windows'), feature_series(domain),
        'float8 on deviations from y[t], within 1e-9 of a two-pass NumPy reference on each window (measured
        2e-13 for kurt, 4e-15 for mean and std, of the column\'s largest |value|)',
    )) }}
{%- endmacro %}


{#-
    CTEs computing the statistics columns of `rows_cte` (pair, ts_utc, is_new and `series`),
    ending in `statistics_values` (pair, ts_utc, is_new, statistics_column_names()...).
    Call it after `with ... as (...),` and select from statistics_values.
-#}
{% macro statistics_ctes(rows_cte, series) -%}
{%- set windows = var('rolling_windows') | map('int') | list -%}
{{ window_deviation_sums_ctes('statistics', rows_cte, series, windows, 4, with_extremes=true) }},

statistics_raw_moments as (
    -- the shift s = mean - y[t] = Σd / W and the moments about y[t] r_k = Σ d^k / W, each
    -- computed once (PostgreSQL evaluates an expression again wherever it is written: the
    -- expanded central moments below read s up to seven times)
    select
        statistics_sums.pair,
        statistics_sums.ts_utc,
        statistics_sums.is_new,
        statistics_sums.series_value
        {%- for window in windows %},
        statistics_sums.dev_sum_1_w{{ window }} / {{ window }}.0 as shift_w{{ window }},
        statistics_sums.dev_sum_2_w{{ window }} / {{ window }}.0 as r2_w{{ window }},
        statistics_sums.dev_sum_3_w{{ window }} / {{ window }}.0 as r3_w{{ window }},
        statistics_sums.dev_sum_4_w{{ window }} / {{ window }}.0 as r4_w{{ window }},
        statistics_sums.window_min_w{{ window }},
        statistics_sums.window_max_w{{ window }}
        {%- endfor %}
        {{- planner_fence_column('statistics_sums') }}
    from statistics_sums
    {{ planner_fence('statistics_sums') }}
),

statistics_moments as (
    -- the central moments m2, m3, m4 (divided by W) from the moments about y[t], in Horner's
    -- form: m2 = r2 - s², m3 = r3 - s (3 r2 - 2 s²), m4 = r4 - s (4 r3 - s (6 r2 - 3 s²))
    select
        statistics_raw_moments.pair,
        statistics_raw_moments.ts_utc,
        statistics_raw_moments.is_new,
        statistics_raw_moments.series_value
        {%- for window in windows %}
        {%- set s = 'statistics_raw_moments.shift_w' ~ window %}
        {%- set r2 = 'statistics_raw_moments.r2_w' ~ window %}
        {%- set r3 = 'statistics_raw_moments.r3_w' ~ window %}
        {%- set r4 = 'statistics_raw_moments.r4_w' ~ window %},
        {{ s }},
        -- clamped at 0 against rounding (greatest() alone would turn the warm-up's NULL into 0)
        case
            when {{ s }} is not null then greatest({{ r2 }} - {{ s }} * {{ s }}, 0)
        end as m2_w{{ window }},
        {{ r3 }} - {{ s }} * (3 * {{ r2 }} - 2 * {{ s }} * {{ s }}) as m3_w{{ window }},
        {{ r4 }} - {{ s }} * (4 * {{ r3 }} - {{ s }} * (6 * {{ r2 }} - 3 * {{ s }} * {{ s }})) as m4_w{{ window }},
        statistics_raw_moments.window_min_w{{ window }},
        statistics_raw_moments.window_max_w{{ window }}
        {%- endfor %}
        {{- planner_fence_column('statistics_raw_moments') }}
    from statistics_raw_moments
    {{ planner_fence('statistics_raw_moments') }}
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
