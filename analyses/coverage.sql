-- Bars per pair and UTC month in the source and in the rate index: the SQL behind
-- `bqx status`, for `dbt compile --select coverage` and a psql session.
with source_months as (
    select
        bars.pair,
        date_trunc('month', bars.ts_utc at time zone 'UTC') as month_utc,
        count(*) as source_bars
    from {{ source('raw', 'm1_bars') }} as bars
    group by bars.pair, date_trunc('month', bars.ts_utc at time zone 'UTC')
),

index_months as (
    select
        indexed.pair,
        date_trunc('month', indexed.ts_utc at time zone 'UTC') as month_utc,
        count(*) as indexed_bars
    from {{ ref('m1_index') }} as indexed
    group by indexed.pair, date_trunc('month', indexed.ts_utc at time zone 'UTC')
)

select
    source_months.pair,
    source_months.month_utc,
    source_months.source_bars,
    coalesce(index_months.indexed_bars, 0) as indexed_bars
from source_months
left join index_months
    on
        source_months.pair = index_months.pair
        and source_months.month_utc = index_months.month_utc
order by source_months.pair, source_months.month_utc
