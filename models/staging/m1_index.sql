{{ config(
    materialized='incremental',
    incremental_strategy='recompute',
    unique_key=['pair', 'ts_utc'],
    on_schema_change='fail',
    post_hook=["{{ volume_bars_index() }}", "{{ record_increment() }}"],
) }}

{#- Incremental on raw.m1_changes (macros/incremental/incremental_rows.sql): per pair, the bars
    changed since the last build are rewritten, numbered after the unchanged bars before them;
    an insert or a delete rewrites the pair to its end (every later bar_number moves), a change
    at or before the pair's baseline bar rewrites the whole pair (every index moves). -#}
{%- do prepare_increment(none) %}
{%- set first_bar = 'increment_bounds.first_bar_number' if is_incremental() else '0' %}

-- float8 throughout: the index is a ratio of two float8 prices times 100, so it carries the
-- prices' own ~1e-16 relative precision; nothing here accumulates.
with changed_bars as (
    select
        bars.pair,
        bars.ts_utc,
        bars.open,
        bars.high,
        bars.low,
        bars.close,
        bars.volume,
        bars.spread,
        -- integer (2^31 minutes are 4000 years): lag() takes an integer offset
        ({{ first_bar }} + row_number() over bars_in_order - 1)::integer as bar_number
    from {{ ref('stg_m1_bars') }} as bars
    {{ increment_rows_join('bars') }}
    window bars_in_order as (partition by bars.pair order by bars.ts_utc)
)

select
    changed_bars.pair,
    changed_bars.ts_utc,
    changed_bars.bar_number,
    changed_bars.open / baselines.baseline_rate * 100 as open_idx,
    changed_bars.high / baselines.baseline_rate * 100 as high_idx,
    changed_bars.low / baselines.baseline_rate * 100 as low_idx,
    changed_bars.close / baselines.baseline_rate * 100 as close_idx,
    changed_bars.volume,
    changed_bars.spread,
    changed_bars.spread / changed_bars.close * 10000 as spread_bps
from changed_bars
inner join {{ ref('baseline_rates') }} as baselines
    on changed_bars.pair = baselines.pair
