{{ config(materialized='view') }}

-- Each pair's newest fully built row, for live use: the last bar that every feature model holds
-- (macros/retrieval/features_as_of.sql, built_through_per_pair: index steps, no scan), its
-- features under their feature_matrix names, when it became known and how old that is now.
-- A view: every query sees the latest build.
with built_through as (
    {{ built_through_per_pair('select baselines.pair from ' ~ ref('baseline_rates') ~ ' as baselines') }}
),

latest_bars as (
    select
        built_through.pair,
        built_through.built_through_ts as ts_utc,
        built_through.built_through_ts + interval '1 minute' as known_at,
        statement_timestamp() - (built_through.built_through_ts + interval '1 minute') as age
    from built_through
    where built_through.built_through_ts is not null
)

{{ select_with_features(
    ['latest_bars.pair', 'latest_bars.ts_utc', 'latest_bars.known_at', 'latest_bars.age'],
    'latest_bars', 'ts_utc', feature_matrix_columns(),
) }}
