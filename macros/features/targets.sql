{#-
    Prediction targets (mart targets): the maths lives here once; documented in
    macros/features/targets.yml. Not a feature: a target at t reads the H bars after t.
-#}

{% macro target_column_names() -%}
    {%- set names = [] -%}
    {%- for h in var('target_horizons') -%}
        {%- do names.append('target_bqx_h' ~ h) -%}
    {%- endfor -%}
    {{ return(names) }}
{%- endmacro %}


{#- Bars before the last one built whose targets an incremental run recomputes: a target at t
    reads up to max(H) bars after t, so the last max(H) rows built (offset max(H) - 1 from the
    last one) may have had incomplete futures (NULL) or, with recompute_from, corrected ones. -#}
{% macro targets_recompute_bars() -%}
    {{ return((var('target_horizons') | max) - 1) }}
{%- endmacro %}


{#- A select over `source` (pair, ts_utc, close_idx) giving pair, ts_utc and every column of
    target_column_names(). float8: each frame re-sums its H closes (no running sum, no drift). -#}
{% macro targets_sql(source) -%}
select
    bars.pair,
    bars.ts_utc,
    {%- for h in var('target_horizons') %}
    case
        when count(bars.close_idx) over future_{{ h }} = {{ h }}
            then (avg(bars.close_idx) over future_{{ h }} - bars.close_idx) / bars.close_idx
    end as target_bqx_h{{ h }}{{ "," if not loop.last }}
    {%- endfor %}
from {{ source }} as bars
window
    {%- for h in var('target_horizons') %}
    future_{{ h }} as (
        partition by bars.pair order by bars.ts_utc
        rows between 1 following and {{ h }} following
    ){{ "," if not loop.last }}
    {%- endfor %}
{%- endmacro %}
