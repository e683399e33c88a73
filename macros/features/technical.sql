{#- The technical indicators (TA-Lib's RSI, MACD, STOCH, ADX/+DI/-DI, CCI) of one domain's
    series. Documented in technical.yml beside this file; the recursive smoothers are the
    aggregates of macros/functions/smoothers.sql. -#}


{#- Output column names, in order, generated from the vars (the feature_matrix mart and
    the models' select lists use this one list). -#}
{% macro technical_column_names() -%}
    {%- set names = [] -%}
    {%- for period in var('rsi_periods') -%}
        {%- do names.append('rsi_' ~ period) -%}
    {%- endfor -%}
    {%- do names.extend(['macd', 'macd_signal', 'macd_hist', 'stoch_k', 'stoch_d']) -%}
    {%- set adx_period = var('adx_period') -%}
    {%- do names.extend(['adx_' ~ adx_period, 'plus_di_' ~ adx_period, 'minus_di_' ~ adx_period]) -%}
    {%- do names.append('cci_' ~ var('cci_period')) -%}
    {{ return(names) }}
{%- endmacro %}


{#- CTEs (to follow a `with source_rows as (...),`) computing every indicator on
    `source` (a CTE with pair, ts_utc, is_new and the series columns named by high, low,
    close; the bqx domain passes its one series for all three). The last CTE is
    `technical_values`: pair, ts_utc, is_new and the columns of technical_column_names().
    Two window levels over the same order (one sort): 1) the smoothing aggregate and the
    rolling extremes and means, 2) lags: CCI's mean absolute deviation (each bar of the
    window against this bar's mean) and the slow %K and %D. -#}
{% macro technical_indicators(source, high, low, close) -%}
    {%- set fastk = var('stoch_fastk') -%}
    {%- set slowk = var('stoch_slowk') -%}
    {%- set slowd = var('stoch_slowd') -%}
    {%- set adx_period = var('adx_period') -%}
    {%- set cci_period = var('cci_period') -%}
    {%- set positions = technical_smoother_positions() -%}
    {%- set smoothed_outputs = positions.keys() | list -%}
technical_windows as (
    select
        source_bars.pair,
        source_bars.ts_utc,
        source_bars.is_new,
        source_bars.{{ close }} as close_value,
        (source_bars.{{ high }} + source_bars.{{ low }} + source_bars.{{ close }}) / 3 as typical_price,
        {#- one aggregate call per row (identical window calls are evaluated once) #}
        {%- for output in smoothed_outputs %}
        ({{ technical_smoothers_name() }}(
            source_bars.{{ high }}, source_bars.{{ low }}, source_bars.{{ close }}
        ) over running_bars)[{{ positions[output] }}] as {{ output }},
        {%- endfor %}
        min(source_bars.{{ low }}) over stoch_bars as lowest_low,
        max(source_bars.{{ high }}) over stoch_bars as highest_high,
        count(source_bars.{{ close }}) over stoch_bars as stoch_bar_count,
        sum((source_bars.{{ high }} + source_bars.{{ low }} + source_bars.{{ close }}) / 3) over cci_bars
        / {{ cci_period }} as typical_mean,
        count(source_bars.{{ close }}) over cci_bars as cci_bar_count
    from {{ source }} as source_bars
    window
        running_bars as (partition by source_bars.pair order by source_bars.ts_utc),
        stoch_bars as (running_bars rows between {{ fastk - 1 }} preceding and current row),
        cci_bars as (running_bars rows between {{ cci_period - 1 }} preceding and current row)
),

technical_fast_k as (
    select
        technical_windows.pair,
        technical_windows.ts_utc,
        technical_windows.is_new,
        {%- for output in smoothed_outputs %}
        technical_windows.{{ output }},
        {%- endfor %}
        technical_windows.typical_price,
        technical_windows.typical_mean,
        technical_windows.cci_bar_count,
        case
            when technical_windows.stoch_bar_count = {{ fastk }} then
                case
                    when
                        abs(technical_windows.highest_high - technical_windows.lowest_low)
                        <= 1e-14 * (abs(technical_windows.highest_high) + abs(technical_windows.lowest_low))
                        then 0
                    else
                        (technical_windows.close_value - technical_windows.lowest_low)
                        / ((technical_windows.highest_high - technical_windows.lowest_low) / 100)
                end
        end as fast_k
    from technical_windows
),

technical_deviations as (
    select
        technical_fast_k.pair,
        technical_fast_k.ts_utc,
        technical_fast_k.is_new,
        {%- for output in smoothed_outputs %}
        technical_fast_k.{{ output }},
        {%- endfor %}
        technical_fast_k.typical_price,
        technical_fast_k.typical_mean,
        technical_fast_k.cci_bar_count,
        (
            abs(technical_fast_k.typical_price - technical_fast_k.typical_mean)
            {%- for lag_bars in range(1, cci_period) %}
            + abs(lag(technical_fast_k.typical_price, {{ lag_bars }}) over running_bars - technical_fast_k.typical_mean)
            {%- endfor %}
        ) / {{ cci_period }} as typical_deviation,
        {#- slow %K of this bar and of the slowd - 1 bars before (SMAs of fast %K, summed oldest
            first as a window sum would), and %D = their SMA: all from lags of fast %K on this one
            window, so STOCH needs no window level of its own; NULL until every lag exists. #}
        {%- set slow_k_of_back = [] %}
        {%- for back in range(slowd) %}
            {%- set terms = [] %}
            {%- for lag_bars in range(back + slowk - 1, back - 1, -1) %}
                {%- do terms.append(
                    'technical_fast_k.fast_k' if lag_bars == 0
                    else 'lag(technical_fast_k.fast_k, ' ~ lag_bars ~ ') over running_bars'
                ) %}
            {%- endfor %}
            {%- do slow_k_of_back.append('(' ~ terms | join(' + ') ~ ') / ' ~ slowk) %}
        {%- endfor %}
        {{ slow_k_of_back[0] }} as slow_k,
        ({{ slow_k_of_back | reverse | join(' + ') }}) / {{ slowd }} as slow_d
    from technical_fast_k
    window running_bars as (partition by technical_fast_k.pair order by technical_fast_k.ts_utc)
),

technical_values as (
    select
        technical_deviations.pair,
        technical_deviations.ts_utc,
        technical_deviations.is_new,
        {%- for period in var('rsi_periods') %}
        technical_deviations.rsi_{{ period }},
        {%- endfor %}
        technical_deviations.macd,
        technical_deviations.macd_signal,
        technical_deviations.macd_hist,
        case when technical_deviations.slow_d is not null then technical_deviations.slow_k end as stoch_k,
        technical_deviations.slow_d as stoch_d,
        technical_deviations.adx as adx_{{ adx_period }},
        technical_deviations.plus_di as plus_di_{{ adx_period }},
        technical_deviations.minus_di as minus_di_{{ adx_period }},
        case
            when technical_deviations.cci_bar_count < {{ cci_period }} then null
            when
                abs(technical_deviations.typical_price - technical_deviations.typical_mean)
                <= 1e-14 * abs(technical_deviations.typical_mean)
                or technical_deviations.typical_deviation <= 1e-14 * abs(technical_deviations.typical_mean)
                then 0
            else
                (technical_deviations.typical_price - technical_deviations.typical_mean)
                / (0.015 * technical_deviations.typical_deviation)
        end as cci_{{ cci_period }}
    from technical_deviations
)
{%- endmacro %}
