{{ config(
    materialized='incremental',
    incremental_strategy='recompute',
    unique_key=['pair', 'ts_utc'],
    on_schema_change='fail',
    post_hook="{{ record_increment() }}",
) }}

-- Targets look forward, so an incremental run recomputes backwards: from max(H) bars before the
-- first bar m1_index rewrote (back_bars), reading max(H) bars past the last row it writes
-- (read_ahead_bars); those are exactly the rows whose H-bar future has changed.
with source_rows as (
    {{ incremental_rows(
        ref('m1_index'),
        ['pair', 'ts_utc', 'close_idx'],
        lookback_bars=0,
        forward_bars=0,
        back_bars=targets_recompute_bars(),
        read_ahead_bars=targets_recompute_bars(),
    ) }}
),

target_values as (
    {{ targets_sql('source_rows') }}
)

select
    target_values.pair,
    target_values.ts_utc,
    {% for column in target_column_names() -%}
        target_values.{{ column }}{% if not loop.last %},{% endif %}
    {% endfor %}
from target_values
where target_values.is_new
