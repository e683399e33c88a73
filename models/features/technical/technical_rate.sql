-- TA-Lib's indicators on the rate index (maths: macros/features/technical.sql). The recursive
-- smoothers restart var('smoother_lookback_bars') bars before the first new bar, further back
-- after a flat run (macros/functions/increment_bounds.sql, moving_columns).
with source_rows as (
    {{ incremental_rows(
        ref('m1_index'),
        ['pair', 'ts_utc', 'high_idx', 'low_idx', 'close_idx'],
        lookback_bars=var('smoother_lookback_bars'),
        forward_bars='end',
        moving_columns=['high_idx', 'low_idx', 'close_idx'],
    ) }}
),

{{ technical_indicators('source_rows', high='high_idx', low='low_idx', close='close_idx') }}

{{ new_feature_rows('technical_values', technical_column_names()) }}
