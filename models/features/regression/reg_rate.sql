-- Quadratic regressions of the rate index close_idx over the W bars ending at t, per window W of
-- var('reg_windows'), endpoint as a ratio: the maths is in macros/features/regression.sql.
with source_rows as (
    {{ incremental_rows(
        ref('m1_index'),
        ['pair', 'ts_utc', 'bar_number', 'close_idx'],
        lookback_bars=(var('reg_windows') | max) - 1,
        grid_bars=reg_block_bars(),
        reference_bars=1,
    ) }}
),

{{ reg_ctes('source_rows', 'close_idx', endpoint='ratio', reference='block') }}

{{ new_feature_rows('reg_values', reg_column_names()) }}
