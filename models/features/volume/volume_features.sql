with source_rows as (
    {{ incremental_rows(
        ref('m1_index'),
        ['pair', 'ts_utc', 'high_idx', 'low_idx', 'close_idx', 'volume'],
        lookback_bars=volume_lookback_bars(),
    ) }}
),

volume_values as (
    {{ volume_features_sql('source_rows') }}
)

{{ new_feature_rows('volume_values', volume_column_names()) }}
