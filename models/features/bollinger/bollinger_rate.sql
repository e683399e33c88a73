-- Bollinger bands of the rate index close_idx per window W of var('bollinger_windows'), width
-- relative to the mid: the maths is in macros/features/bollinger.sql.
with source_rows as (
    {{ incremental_rows(ref('m1_index'), ['pair', 'ts_utc', 'close_idx'], lookback_bars=var('bollinger_windows') | max) }}
),

{{ bollinger_ctes('source_rows', 'close_idx', width_relative_to_mid=true) }}

{{ new_feature_rows('bollinger_bands', bollinger_column_names()) }}
