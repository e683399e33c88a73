-- Bollinger bands of the BQX series bqx_w{var('bqx_series_window')} per window W of
-- var('bollinger_windows'), width absolute (the series crosses 0): the maths is in
-- macros/features/bollinger.sql.
{%- set series = 'bqx_w' ~ var('bqx_series_window') %}
with source_rows as (
    {{ incremental_rows(ref('bqx'), ['pair', 'ts_utc', series], lookback_bars=var('bollinger_windows') | max) }}
),

{{ bollinger_ctes('source_rows', series, width_relative_to_mid=false) }}

{{ new_feature_rows('bollinger_bands', bollinger_column_names()) }}
