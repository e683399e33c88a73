-- Quadratic regressions of the BQX series bqx_w{var('bqx_series_window')} over the W bars ending at
-- t, per window W of var('reg_windows'), endpoint as a difference: the maths is in
-- macros/features/regression.sql.
{%- set series = 'bqx_w' ~ var('bqx_series_window') %}
with source_rows as (
    {{ incremental_rows(ref('bqx'), ['pair', 'ts_utc', series], lookback_bars=var('reg_windows') | max) }}
),

{{ reg_ctes('source_rows', series, endpoint='difference', reference='zero') }}

{{ new_feature_rows('reg_values', reg_column_names()) }}
