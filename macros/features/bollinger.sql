{#-
    Bollinger bands of a series: bb_mid_wW bb_upper_wW bb_lower_wW bb_width_wW bb_pctb_wW for W in
    var('bollinger_windows'), k = var('bollinger_k'), sigma the population std of the W bars
    t-W+1 .. t (as TA-Lib BBANDS). Documented in macros/features/bollinger.yml.
-#}

{#- The output columns, in order: the five band columns of each window of var('bollinger_windows'). -#}
{% macro bollinger_column_names() -%}
    {{ return(bollinger_columns('rate') | map(attribute='name') | list) }}
{%- endmacro %}


{#- The column specs (macros/catalog/feature_columns.sql) of bollinger_rate (domain 'rate': width
    relative to the mid) or bollinger_bqx ('bqx': width absolute). -#}
{% macro bollinger_columns(domain) -%}
    {%- set width = {
        'rate': '(bb_upper_w{w} − bb_lower_w{w}) / bb_mid_w{w} = 2k·sigma / mid: band width relative to the
            level; 0 for a flat window.',
        'bqx': 'bb_upper_w{w} − bb_lower_w{w} = 2k·sigma, absolute (the BQX series crosses 0, so no division
            by the mid); 0 for a flat window.',
    } -%}
    {%- set metrics = [
        {'name': 'bb_mid_w{w}', 'template': 'Middle band: the simple mean of {series} over the {w} bars
            t-{w1} ... t (window {w} bars, var bollinger_windows).'},
        {'name': 'bb_upper_w{w}', 'template': 'bb_mid_w{w} + k·sigma, k = var bollinger_k (now {k}), sigma the
            population standard deviation (ddof 0, as TA-Lib BBANDS) of the same {w} values.'},
        {'name': 'bb_lower_w{w}', 'template': 'bb_mid_w{w} − k·sigma (see bb_upper_w{w}).'},
        {'name': 'bb_width_w{w}', 'template': width[domain],
            'never_null_because': 'mid > 0' if domain == 'rate' else none},
        {'name': 'bb_pctb_w{w}', 'template': '%b = (y[t] − bb_lower_w{w}) / (bb_upper_w{w} − bb_lower_w{w}),
            y[t] the bar\'s own value: 0 on the lower band, 1 on the upper.',
            'null_when': 'the window is flat (all {w} values equal: sigma = 0, upper = lower, width 0)',
            'null_allowed_when': 'bb_width_w{w} = 0'},
    ] -%}
    {{ return(windowed_columns(
        metrics, var('bollinger_windows'), feature_series(domain),
        'float8 on deviations from y[t], within 1e-9 of NumPy and TA-Lib BBANDS on each window (measured 3e-14
        of the column\'s largest |value|)',
        values={'k': var('bollinger_k')},
    )) }}
{%- endmacro %}


{#-
    CTEs computing the Bollinger columns of `rows_cte` (pair, ts_utc, is_new and `series`),
    ending in `bollinger_bands` (pair, ts_utc, is_new, bollinger_column_names()...). Call it
    after `with ... as (...),` and select from bollinger_bands.
    width_relative_to_mid: width = (upper - lower) / mid (the rate domain) or upper - lower (the
    BQX domain, whose series crosses 0).
    The window sums of deviations from y[t] come from window_deviation_sums_ctes
    (macros/shared/window_deviation_sums.sql), which says why they are computed so.
-#}
{% macro bollinger_ctes(rows_cte, series, width_relative_to_mid) -%}
{%- set windows = var('bollinger_windows') | map('int') | list -%}
{%- set k = var('bollinger_k') | float -%}
{{ window_deviation_sums_ctes('bollinger', rows_cte, series, windows, 2) }},

bollinger_moments as (
    -- s = mean - y[t] and the population variance m2 = Σ d² / W - s² (d = deviations from y[t])
    select
        bollinger_sums.pair,
        bollinger_sums.ts_utc,
        bollinger_sums.is_new,
        bollinger_sums.series_value
        {%- for window in windows %}
        {%- set s = 'bollinger_sums.dev_sum_1_w' ~ window ~ ' / ' ~ window ~ '.0' %},
        {{ s }} as shift_w{{ window }},
        -- clamped at 0 against rounding (greatest() alone would turn the warm-up's NULL into 0)
        case
            when bollinger_sums.dev_sum_1_w{{ window }} is not null
                then sqrt(greatest(bollinger_sums.dev_sum_2_w{{ window }} / {{ window }}.0 - ({{ s }}) * ({{ s }}), 0))
        end as sigma_w{{ window }}
        {%- endfor %}
        {{- planner_fence_column('bollinger_sums') }}
    from bollinger_sums
    -- the bands read sigma and the shift five times each: computed once
    {{ planner_fence('bollinger_sums') }}
),

bollinger_bands as (
    -- sigma = 0 exactly when all W values are equal (every deviation is then exactly 0):
    -- upper = lower and pctb is NULL there
    select
        bollinger_moments.pair,
        bollinger_moments.ts_utc,
        bollinger_moments.is_new
        {%- for window in windows %}
        {%- set mid = 'bollinger_moments.series_value + bollinger_moments.shift_w' ~ window %}
        {%- set sigma = 'bollinger_moments.sigma_w' ~ window %},
        {{ mid }} as bb_mid_w{{ window }},
        {{ mid }} + {{ k }} * {{ sigma }} as bb_upper_w{{ window }},
        {{ mid }} - {{ k }} * {{ sigma }} as bb_lower_w{{ window }},
        {%- if width_relative_to_mid %}
        {{ 2 * k }} * {{ sigma }} / nullif({{ mid }}, 0) as bb_width_w{{ window }},
        {%- else %}
        {{ 2 * k }} * {{ sigma }} as bb_width_w{{ window }},
        {%- endif %}
        -- (y - lower) / (upper - lower) = (k sigma - s) / (2 k sigma)
        ({{ k }} * {{ sigma }} - bollinger_moments.shift_w{{ window }}) / nullif({{ 2 * k }} * {{ sigma }}, 0)
            as bb_pctb_w{{ window }}
        {%- endfor %}
    from bollinger_moments
)
{%- endmacro %}
