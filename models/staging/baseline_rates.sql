{{ config(materialized='table', distribution='reference') }}
{#- distribution: on Citus a reference table (a row per pair, on every node), which m1_index's
    bookkeeping on the coordinator joins (macros/distribution/distribution.sql) #}

{#- Fail the build, naming them, when pairs have bars but none at or after the baseline date:
    their index would be undefined. Runs only at execution (not when compiling or linting).
    Index probes per pair on raw.m1_bars' primary key, never a scan of the bars. -#}
{% if execute and not flags.WHICH in ('compile', 'docs', 'ls', 'parse') %}
    {% set missing_sql %}
        select
            known.pair,
            (
                select bars.ts_utc from {{ ref('stg_m1_bars') }} as bars
                where bars.pair = known.pair order by bars.ts_utc desc limit 1
            ) as last_ts
        from {{ pair_values() }} as known (pair)
        where not exists (
            select from {{ ref('stg_m1_bars') }} as bars
            where bars.pair = known.pair and bars.ts_utc >= {{ utc_timestamp(var('baseline_date')) }}
        )
        order by known.pair
    {% endset %}
    {% if distributed() %}
        {% set missing_sql = distributed_pairs_before_baseline_sql(ref('stg_m1_bars')) %}
    {% endif %}
    {% set missing = run_query(missing_sql) %}
    {% set names = [] %}
    {% for row in missing.rows if row[1] is not none %}
        {% do names.append(row[0] ~ " (last bar " ~ row[1] ~ ")") %}
    {% endfor %}
    {% if names | length > 0 %}
        {{ exceptions.raise_compiler_error(
            "No bar at or after baseline_date " ~ var('baseline_date') ~ " for: " ~ names | join(', ')
            ~ ". Set an earlier baseline, e.g. --vars '{\"baseline_date\": \"2017-01-01\"}'.") }}
    {% endif %}
{% endif %}

{% if distributed() -%}
{{ distributed_baseline_rates_sql(ref('stg_m1_bars')) }}
{%- else -%}
    -- per pair, the first bar at or after the baseline date: one index probe each
    select
        known_pairs.pair,
        first_bar.ts_utc as baseline_ts,
        first_bar.close as baseline_rate
    from {{ pair_values() }} as known_pairs (pair)
    inner join lateral (
        select
            bars.ts_utc,
            bars.close
        from {{ ref('stg_m1_bars') }} as bars
        where bars.pair = known_pairs.pair and bars.ts_utc >= {{ utc_timestamp(var('baseline_date')) }}
        order by bars.ts_utc
        limit 1
    ) as first_bar on true
{%- endif %}
