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

    Two window levels over the same order (one ordered scan, no sort), each ONE WindowAgg:
    1) the %K extremes over var('stoch_fastk') bars (a sliding frame) give fast %K;
    2) over the running frame: the smoothing aggregate (one call per row) and the lags, of
    the typical price for CCI's mean and mean absolute deviation, of fast %K for slow %K and
    %D. Lagged columns come first in level 1's rows (the lag fetches deform less of each row).
    CCI's mean is the sum of the typical price and its lags (oldest first, as a window sum
    adds), computed once in level 2's projection; a missing or NULL bar makes it NULL, which
    is the warm-up (the window must hold W non-NULL values). -#}
{% macro technical_indicators(source, high, low, close) -%}
    {%- set fastk = var('stoch_fastk') -%}
    {%- set slowk = var('stoch_slowk') -%}
    {%- set slowd = var('stoch_slowd') -%}
    {%- set adx_period = var('adx_period') -%}
    {%- set cci_period = var('cci_period') -%}
    {%- set positions = technical_smoother_positions() -%}
    {%- set smoothed_outputs = positions.keys() | list -%}
technical_fast_k as (
    select
        (source_bars.{{ high }} + source_bars.{{ low }} + source_bars.{{ close }}) / 3 as typical_price,
        case
            when count(source_bars.{{ close }}) over stoch_bars = {{ fastk }} then
                case
                    when
                        abs(max(source_bars.{{ high }}) over stoch_bars - min(source_bars.{{ low }}) over stoch_bars)
                        <= 1e-14 * (
                            abs(max(source_bars.{{ high }}) over stoch_bars)
                            + abs(min(source_bars.{{ low }}) over stoch_bars)
                        )
                        then 0
                    else
                        (source_bars.{{ close }} - min(source_bars.{{ low }}) over stoch_bars)
                        / ((max(source_bars.{{ high }}) over stoch_bars - min(source_bars.{{ low }}) over stoch_bars) / 100)
                end
        end as fast_k,
        source_bars.pair,
        source_bars.ts_utc,
        source_bars.is_new,
        source_bars.{{ high }} as high_value,
        source_bars.{{ low }} as low_value,
        source_bars.{{ close }} as close_value
    from {{ source }} as source_bars
    window stoch_bars as (
        partition by source_bars.pair order by source_bars.ts_utc rows between {{ fastk - 1 }} preceding and current row
    )
),

technical_lags as (
    select
        technical_fast_k.pair,
        technical_fast_k.ts_utc,
        technical_fast_k.is_new,
        {#- one aggregate call per row (identical window calls are evaluated once) #}
        {%- for output in smoothed_outputs %}
        ({{ technical_smoothers_name() }}(
            technical_fast_k.high_value, technical_fast_k.low_value, technical_fast_k.close_value
        ) over running_bars)[{{ positions[output] }}] as {{ output }},
        {%- endfor %}
        technical_fast_k.typical_price,
        {%- for lag_bars in range(1, cci_period) %}
        lag(technical_fast_k.typical_price, {{ lag_bars }}) over running_bars as typical_price_{{ lag_bars }},
        {%- endfor %}
        (
            {%- for lag_bars in range(cci_period - 1, 0, -1) %}
            lag(technical_fast_k.typical_price, {{ lag_bars }}) over running_bars +
            {%- endfor %}
            technical_fast_k.typical_price
        ) / {{ cci_period }} as typical_mean,
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
        technical_lags.pair,
        technical_lags.ts_utc,
        technical_lags.is_new,
        {%- for period in var('rsi_periods') %}
        technical_lags.rsi_{{ period }},
        {%- endfor %}
        technical_lags.macd,
        technical_lags.macd_signal,
        technical_lags.macd_hist,
        case when technical_lags.slow_d is not null then technical_lags.slow_k end as stoch_k,
        technical_lags.slow_d as stoch_d,
        technical_lags.adx as adx_{{ adx_period }},
        technical_lags.plus_di as plus_di_{{ adx_period }},
        technical_lags.minus_di as minus_di_{{ adx_period }},
        {#- 0 when |tp - mean| or the mean absolute deviation d is within 1e-14 of |mean|; d is
            written once (this CTE is inlined into the model's select, so each mention would be
            evaluated): nullif(greatest(d, limit), limit) is NULL exactly when d <= limit. #}
        case
            when technical_lags.typical_mean is null then null
            when
                abs(technical_lags.typical_price - technical_lags.typical_mean)
                <= 1e-14 * abs(technical_lags.typical_mean)
                then 0
            else coalesce(
                (technical_lags.typical_price - technical_lags.typical_mean) / (0.015 * nullif(greatest(
                    (
                        abs(technical_lags.typical_price - technical_lags.typical_mean)
                        {%- for lag_bars in range(1, cci_period) %}
                        + abs(technical_lags.typical_price_{{ lag_bars }} - technical_lags.typical_mean)
                        {%- endfor %}
                    ) / {{ cci_period }},
                    1e-14 * abs(technical_lags.typical_mean)
                ), 1e-14 * abs(technical_lags.typical_mean))),
                0
            )
        end as cci_{{ cci_period }}
    from technical_lags
)
{%- endmacro %}
