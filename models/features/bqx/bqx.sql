-- BQX momentum of the rate index close_idx per window W of var('bqx_windows'): the maths is in
-- macros/features/bqx.sql.
with source_rows as (
    {{ incremental_rows(ref('m1_index'), ['pair', 'ts_utc', 'close_idx'], lookback_bars=var('bqx_windows') | max) }}
),

{{ bqx_ctes('source_rows', 'close_idx') }}

{{ new_feature_rows('bqx_values', bqx_column_names()) }}
