-- Realised volatility of the rate index close_idx per window W of var('volatility_windows'), on
-- one-bar log returns: the maths is in macros/features/volatility.sql.
with source_rows as (
    {{ incremental_rows(
        ref('m1_index'),
        ['pair', 'ts_utc', 'bar_number', 'close_idx'],
        lookback_bars=volatility_lookback_bars(),
        grid_bars=volatility_block_bars(),
        reference_bars=2,
    ) }}
),

{{ volatility_ctes('source_rows', 'close_idx', returns='log') }}

{{ new_feature_rows('volatility_values', volatility_column_names()) }}
