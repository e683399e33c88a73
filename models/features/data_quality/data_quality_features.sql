with source_rows as (
    {{ incremental_rows(
        ref('m1_index'),
        ['pair', 'ts_utc', 'close_idx'],
        lookback_bars=data_quality_lookback_bars(),
        forward_bars='end',
    ) }}
),

data_quality_values as (
    {{ data_quality_features_sql('source_rows', built=this if is_incremental() else none) }}
)

{{ new_feature_rows('data_quality_values', data_quality_column_names()) }}
