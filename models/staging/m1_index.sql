-- float8 throughout: the index is a ratio of two float8 prices times 100, so it carries the
-- prices' own ~1e-16 relative precision; nothing here accumulates.
select
    bars.pair,
    bars.ts_utc,
    bars.open / baselines.baseline_rate * 100 as open_idx,
    bars.high / baselines.baseline_rate * 100 as high_idx,
    bars.low / baselines.baseline_rate * 100 as low_idx,
    bars.close / baselines.baseline_rate * 100 as close_idx,
    bars.volume,
    bars.spread,
    bars.spread / bars.close * 10000 as spread_bps
from {{ ref('stg_m1_bars') }} as bars
inner join {{ ref('baseline_rates') }} as baselines
    on bars.pair = baselines.pair
