-- Rolling mean, std, skew, kurt, min and max of the BQX series bqx_w{var('bqx_series_window')}
-- per window W of var('rolling_windows'): the maths is in macros/features/statistics.sql.
{%- set series = 'bqx_w' ~ var('bqx_series_window') %}
with source_rows as (
    {{ incremental_rows(ref('bqx'), ['pair', 'ts_utc', series], lookback_bars=var('rolling_windows') | max) }}
),

{{ statistics_ctes('source_rows', series) }}

{{ new_feature_rows('statistics_values', statistics_column_names()) }}
