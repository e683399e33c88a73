{{ config(
    materialized='incremental',
    incremental_strategy='delete+insert',
    unique_key=['pair', 'ts_utc'],
    on_schema_change='fail',
) }}

-- Targets look forward, so an incremental run recomputes backwards: incremental_rows reads,
-- per pair, from max(H) - 1 bars before the last row built (or before recompute_from) to the
-- end, and EVERY row read is emitted again (not only `is_new`): those are exactly the rows whose
-- H-bar future has gained bars. delete+insert on (pair, ts_utc) replaces them, so an
-- incremental run equals a full refresh.
with source_rows as (
    {{ incremental_rows(ref('m1_index'), ['pair', 'ts_utc', 'close_idx'], lookback_bars=targets_recompute_bars()) }}
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
