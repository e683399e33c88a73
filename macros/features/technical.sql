{#- The technical indicators (TA-Lib's RSI, MACD, STOCH, ADX/+DI/-DI, CCI) of one domain's
    series. Documented in technical.yml beside this file; the recursive smoothers are the
    aggregates of macros/functions/smoothers.sql. -#}


{#- Output column names, in order, generated from the vars (the feature_matrix mart and
    the models' select lists use this one list). -#}
{% macro technical_column_names() -%}
    {{ return(technical_columns('rate') | map(attribute='name') | list) }}
{%- endmacro %}


{#- The column specs (macros/catalog/feature_columns.sql) of technical_rate / technical_bqx: one
    template per indicator, its warm-up TA-Lib's lookback for the periods in the vars. -#}
{% macro technical_columns(domain) -%}
    {%- set series = feature_series(domain) -%}
    {%- set fast = [var('macd_fast'), var('macd_slow')] | min -%}
    {%- set slow = [var('macd_fast'), var('macd_slow')] | max -%}
    {%- set signal = var('macd_signal') -%}
    {%- set fastk, slowk, slowd = var('stoch_fastk'), var('stoch_slowk'), var('stoch_slowd') -%}
    {%- set adx, cci = var('adx_period'), var('cci_period') -%}
    {%- set values = {
        'fast': fast, 'slow': slow, 'signal': signal, 'fastk': fastk, 'slowk': slowk, 'slowd': slowd,
        'adx': adx, 'adx1': adx - 1, 'cci': cci,
        'inputs': 'Inputs: high_idx, low_idx, close_idx.' if domain == 'rate'
            else 'Inputs: high = low = close = the series (NULL on its own warm-up: TA-Lib on the non-NULL part).',
        'nan': 'NULL exactly where TA-Lib returns NaN.',
    } -%}
    {%- set indicators = [] -%}
    {%- for period in var('rsi_periods') -%}
        {%- do indicators.append({
            'name': 'rsi_' ~ period, 'warmup': period, 'rule': 'the period, var rsi_periods',
            'template': 'RSI over {period} bars (TA-Lib RSI, Wilder): 100 × avg gain / (avg gain + avg loss),
                averages seeded by the SMA of the first {period} close-to-close changes, then
                avg = (avg × {period1} + today) / {period}. 0 when avg gain + avg loss = 0 (TA-Lib\'s flat-market
                value). {inputs} {nan}',
            'values': {'period': period, 'period1': period - 1},
        }) -%}
    {%- endfor -%}
    {%- set macd_warmup = slow + signal - 2 -%}
    {%- do indicators.extend([
        {'name': 'macd', 'warmup': macd_warmup, 'rule': 'slow + signal − 2: TA-Lib returns NaN for the line
            too until the signal exists',
            'template': 'MACD line (TA-Lib MACD {fast}/{slow}/{signal}, vars macd_fast/slow/signal): EMA{fast} −
            EMA{slow} of the close, EMA = (x − EMA) × 2/(n+1) + EMA; EMA{slow} seeded by the SMA of the first
            {slow} bars, EMA{fast} by the SMA of the {fast} bars ending on the same bar (as TA-Lib). {inputs} {nan}'},
        {'name': 'macd_signal', 'warmup': macd_warmup, 'rule': 'slow + signal − 2',
            'template': 'Signal line: EMA{signal} of the MACD line, seeded by the SMA of its first {signal} values.
            {inputs} {nan}'},
        {'name': 'macd_hist', 'warmup': macd_warmup, 'rule': 'slow + signal − 2',
            'template': 'macd − macd_signal. {inputs} {nan}'},
        {'name': 'stoch_k', 'warmup': fastk + slowk + slowd - 3,
            'rule': 'fastk + slowk + slowd − 3: TA-Lib aligns %K with %D',
            'template': 'Slow %K (TA-Lib STOCH {fastk}/{slowk}/{slowd} with SMAs, vars stoch_fastk/slowk/slowd):
            SMA{slowk} of fast %K = (close − lowest low) / ((highest high − lowest low) / 100) over {fastk} bars;
            fast %K = 0 when the range is within 1e-14 of |high| + |low| (flat window). {inputs} {nan}'},
        {'name': 'stoch_d', 'warmup': fastk + slowk + slowd - 3, 'rule': 'fastk + slowk + slowd − 3',
            'template': 'Slow %D: SMA{slowd} of slow %K. {inputs} {nan}'},
        {'name': 'adx_' ~ adx, 'warmup': 2 * adx - 1, 'rule': '2 × adx_period − 1',
            'template': 'ADX over {adx} bars (TA-Lib ADX, Wilder, var adx_period): DX = 100 × |−DI − +DI| /
            (−DI + +DI); first ADX = mean of the first {adx} DX, then ADX = (ADX × {adx1} + DX) / {adx};
            unchanged on a bar without DX (TR = 0 or both DI 0). {inputs} {nan}'},
        {'name': 'plus_di_' ~ adx, 'warmup': adx, 'rule': 'adx_period',
            'template': '+DI over {adx} bars (TA-Lib PLUS_DI): 100 × +DM{adx} / TR{adx}, Wilder sums
            (sum − sum/{adx} + today) seeded by the sum of the first {adx1} one-bar values; +DM1 = today\'s up
            move when > 0 and > the down move; TR = max(high − low, |high − prev close|, |low − prev close|).
            0 when TR{adx} = 0. {inputs} {nan}'},
        {'name': 'minus_di_' ~ adx, 'warmup': adx, 'rule': 'adx_period',
            'template': '−DI over {adx} bars (TA-Lib MINUS_DI): 100 × −DM{adx} / TR{adx}, as plus_di_{adx} with
            the down move (prev low − low). 0 when TR{adx} = 0. {inputs} {nan}'},
        {'name': 'cci_' ~ cci, 'warmup': cci - 1, 'rule': 'cci_period − 1',
            'template': 'CCI over {cci} bars (TA-Lib CCI, var cci_period): (tp − mean(tp)) / (0.015 × mean
            |tp − mean(tp)|), tp = (high + low + close) / 3; 0 when the deviation from the mean or the mean
            absolute deviation is within 1e-14 of |mean| (flat window). {inputs} {nan}'},
    ]) -%}
    {%- set columns = [] -%}
    {%- for indicator in indicators -%}
        {%- set filled = values.copy() -%}
        {%- do filled.update(indicator.get('values', {})) -%}
        {%- do columns.append(feature_column(
            indicator.name, indicator.template, values=filled, warmup=indicator.warmup, series=series,
            warmup_rule=indicator.rule,
            precision='float8, within 1e-9 of the ta-lib wheel (TA-Lib 0.8.1) on each pair (measured ~1e-15, CCI
            1.2e-11, of the column\'s largest |value|)',
        )) -%}
    {%- endfor -%}
    {{ return(columns) }}
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
