{{ config(indexes=[{'columns': ['pair', 'ts_utc'], 'unique': true}]) }}

-- No window: lookback 0 (incremental runs read only the new bars and the last one built).
with source_rows as (
    {{ incremental_rows(ref('m1_index'), ['pair', 'ts_utc'], lookback_bars=0) }}
),

time_values as (
    {{ time_features_sql('source_rows') }}
)

{{ new_feature_rows('time_values', time_column_names()) }}
