{#-
    Bollinger bands of a series: bb_mid_wW bb_upper_wW bb_lower_wW bb_width_wW bb_pctb_wW for W in
    var('bollinger_windows'), k = var('bollinger_k'), sigma the population std of the W bars
    t-W+1 .. t (as TA-Lib BBANDS). Documented in macros/features/bollinger.yml.
-#}

{#- The output columns, in order: the five band columns of each window of var('bollinger_windows'). -#}
{% macro bollinger_column_names() -%}
    {%- set names = [] -%}
    {%- for window in var('bollinger_windows') -%}
        {%- for metric in ['bb_mid', 'bb_upper', 'bb_lower', 'bb_width', 'bb_pctb'] -%}
            {%- do names.append(metric ~ '_w' ~ window) -%}
        {%- endfor -%}
    {%- endfor -%}
    {{ return(names) }}
{%- endmacro %}


{#-
    CTEs computing the Bollinger columns of `rows_cte` (pair, ts_utc, is_new and `series`),
    ending in `bollinger_bands` (pair, ts_utc, is_new, bollinger_column_names()...). Call it
    after `with ... as (...),` and select from bollinger_bands.
    width_relative_to_mid: width = (upper - lower) / mid (the rate domain) or upper - lower (the
    BQX domain, whose series crosses 0).
    The window sums of deviations from y[t] come from window_deviation_sums_ctes
    (macros/features/statistics.sql), which says why they are computed so.
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
    from bollinger_sums
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
