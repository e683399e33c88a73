-- Rolling mean, std, skew, kurt, min and max of the rate index close_idx per window W of
-- var('rolling_windows'): the maths is in macros/features/statistics.sql.
with source_rows as (
    {{ incremental_rows(ref('m1_index'), ['pair', 'ts_utc', 'close_idx'], lookback_bars=var('rolling_windows') | max) }}
),

{{ statistics_ctes('source_rows', 'close_idx') }}

{{ new_feature_rows('statistics_values', statistics_column_names()) }}
