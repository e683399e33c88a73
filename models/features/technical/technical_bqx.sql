{%- set series = 'bqx_w' ~ var('bqx_series_window') %}

-- TA-Lib's indicators on the BQX series (high = low = close = the series; maths:
-- macros/features/technical.sql). The series is NULL on its own warm-up; the smoothing
-- aggregates skip NULLs and the windows count non-NULL values, so every indicator starts on
-- the series' first value as if it were the first bar.
with source_rows as (
    {{ incremental_rows(
        ref('bqx'),
        ['pair', 'ts_utc', series],
        lookback_bars=var('smoother_lookback_bars'),
        forward_bars='end',
        moving_columns=[series],
    ) }}
),

{{ technical_indicators('source_rows', high=series, low=series, close=series) }}

{{ new_feature_rows('technical_values', technical_column_names()) }}
