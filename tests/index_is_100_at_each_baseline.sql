-- rate_index is exactly 100 at each pair's baseline bar (close / itself × 100 in float8),
-- and every pair in the index has its baseline bar there.
select
    baselines.pair,
    baselines.baseline_ts,
    indexed.close_idx
from {{ ref('baseline_rates') }} as baselines
left join {{ ref('m1_index') }} as indexed
    on
        baselines.pair = indexed.pair
        and baselines.baseline_ts = indexed.ts_utc
where indexed.close_idx is distinct from 100
