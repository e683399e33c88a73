with source_rows as (
    {{ incremental_rows(
        ref('m1_index'),
        ['pair', 'ts_utc', 'spread_bps'],
        lookback_bars=spread_lookback_bars(),
    ) }}
),

spread_values as (
    {{ spread_features_sql('source_rows') }}
)

{{ new_feature_rows('spread_values', spread_column_names()) }}
