{{ config(materialized='view') }}

-- A view: raw.m1_bars' primary key (pair, ts_utc) already makes the bars unique, so a copy
-- of the source (10M+ rows a year) would only cost time and disk.
select
    bars.pair::text as pair,
    bars.ts_utc::timestamptz as ts_utc,
    bars.open::double precision as open,
    bars.high::double precision as high,
    bars.low::double precision as low,
    bars.close::double precision as close,
    bars.volume::bigint as volume,
    bars.spread::double precision as spread
from {{ source('raw', 'm1_bars') }} as bars
where bars.pair in ({{ quoted_pairs() }})
