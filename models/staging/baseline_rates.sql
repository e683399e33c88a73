{{ config(materialized='table') }}

{#- Fail the build, naming them, when pairs have no bar at or after the baseline date:
    their index would be undefined. Runs only at execution (not when compiling or linting). -#}
{% if execute and not flags.WHICH in ('compile', 'docs', 'ls', 'parse') %}
    {% set missing_sql %}
        select
            bars.pair,
            max(bars.ts_utc) as last_ts
        from {{ ref('stg_m1_bars') }} as bars
        group by bars.pair
        having max(bars.ts_utc) < {{ utc_timestamp(var('baseline_date')) }}
        order by bars.pair
    {% endset %}
    {% set missing = run_query(missing_sql) %}
    {% if missing.rows | length > 0 %}
        {% set names = [] %}
        {% for row in missing.rows %}
            {% do names.append(row[0] ~ " (last bar " ~ row[1] ~ ")") %}
        {% endfor %}
        {{ exceptions.raise_compiler_error(
            "No bar at or after baseline_date " ~ var('baseline_date') ~ " for: " ~ names | join(', ')
            ~ ". Set an earlier baseline, e.g. --vars '{\"baseline_date\": \"2017-01-01\"}'.") }}
    {% endif %}
{% endif %}

with bars_from_baseline as (
    select
        bars.pair,
        bars.ts_utc,
        bars.close
    from {{ ref('stg_m1_bars') }} as bars
    where bars.ts_utc >= {{ utc_timestamp(var('baseline_date')) }}
)

select distinct on (bars_from_baseline.pair)
    bars_from_baseline.pair,
    bars_from_baseline.ts_utc as baseline_ts,
    bars_from_baseline.close as baseline_rate
from bars_from_baseline
order by bars_from_baseline.pair, bars_from_baseline.ts_utc
