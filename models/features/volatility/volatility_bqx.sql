-- Realised volatility of the BQX series bqx_w{var('bqx_series_window')} per window W of
-- var('volatility_windows'), on one-bar differences (the series crosses 0): the maths is in
-- macros/features/volatility.sql.
{%- set series = 'bqx_w' ~ var('bqx_series_window') %}
with source_rows as (
    {{ incremental_rows(
        ref('bqx'),
        ['pair', 'ts_utc', 'bar_number', series],
        lookback_bars=volatility_lookback_bars(),
        grid_bars=volatility_block_bars(),
        reference_bars=2,
    ) }}
),

{{ volatility_ctes('source_rows', series, returns='difference') }}

{{ new_feature_rows('volatility_values', volatility_column_names()) }}
