-- BQX momentum of the rate index close_idx per window W of var('bqx_windows'): the maths is in
-- macros/features/bqx.sql.
with source_rows as (
    {{ incremental_rows(
        ref('m1_index'),
        ['pair', 'ts_utc', 'bar_number', 'close_idx'],
        lookback_bars=var('bqx_windows') | max,
        grid_bars=bqx_grid_half(),
        reference_bars=bqx_grid_half(),
    ) }}
),

{{ bqx_ctes('source_rows', 'close_idx') }}

-- bar_number too: the bqx-domain models read this table as their input
{{ new_feature_rows('bqx_values', ['bar_number'] + bqx_column_names()) }}
