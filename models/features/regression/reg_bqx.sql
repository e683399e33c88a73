-- Quadratic regressions of the BQX series bqx_w{var('bqx_series_window')} over the W bars ending at
-- t, per window W of var('reg_windows'), endpoint as a difference: the maths is in
-- macros/features/regression.sql.
{%- set series = 'bqx_w' ~ var('bqx_series_window') %}
with source_rows as (
    {{ incremental_rows(
        ref('bqx'),
        ['pair', 'ts_utc', 'bar_number', series],
        lookback_bars=(var('reg_windows') | max) - 1,
        grid_bars=reg_block_bars(),
        reference_bars=1,
    ) }}
),

{{ reg_ctes('source_rows', series, endpoint='difference', reference='zero') }}

{{ new_feature_rows('reg_values', reg_column_names()) }}
