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
    target_column_names().

    float8 on forward deviations, in two steps of lead() (each row's value depends only on its own
    H + 1 closes, no running sum, so an incremental run is bit-identical to a full build):
    with B = gcd of the horizons,
      block[s] = Σ_{j=0}^{B−1} (close[s+j] − close[s])                       (B − 1 leads)
      Σ_{j=1}^{H} (close[t+j] − close[t])
        = Σ_{k<H/B} (block[t+1+kB] + B · (close[t+1+kB] − close[t]))         (2 leads per block)
    i.e. B − 1 + 2 max(H)/B lead() calls per row (22 for 15 .. 60) where a float8 avg() over a
    moving frame re-adds its H values for every row and horizon (no inverse transition for
    float8). Every difference is of nearby closes, exact (Sterbenz) and on the target's own
    scale, so nothing cancels against the price level. A missing or NULL close among the H bars
    after t makes a block, hence the target, NULL. -#}
{% macro targets_sql(source) -%}
{%- set horizons = var('target_horizons') | map('int') | unique | sort | list -%}
{%- set ns = namespace(block=0) -%}
{%- for h in horizons -%}
    {#- Euclid's gcd (no loops with break in Jinja: at most `h` steps, ample) -#}
    {%- set g = namespace(a=ns.block, b=h) -%}
    {%- for _ in range(64) if g.b != 0 -%}
        {%- set r = g.a % g.b -%}
        {%- set g.a = g.b -%}
        {%- set g.b = r -%}
    {%- endfor -%}
    {%- set ns.block = g.a -%}
{%- endfor -%}
{%- set block = ns.block -%}
{%- set blocks = (horizons | last) // block -%}
select
    target_blocks.pair,
    target_blocks.ts_utc,
    {%- for h in horizons %}
    ({% for k in range(h // block) -%}
    target_blocks.future_block_{{ k }}{{ " + " if not loop.last }}
    {%- endfor %}) / {{ h }}.0 / target_blocks.close_idx as target_bqx_h{{ h }}{{ "," if not loop.last }}
    {%- endfor %}
from (
    -- block k of the future (bars t+1+kB .. t+(k+1)B): Σ (close − close[t])
    select
        target_block_sums.pair,
        target_block_sums.ts_utc,
        target_block_sums.close_idx
        {%- for k in range(blocks) %},
        lead(target_block_sums.block_sum, {{ 1 + k * block }}) over bars_in_order
        + {{ block }} * (lead(target_block_sums.close_idx, {{ 1 + k * block }}) over bars_in_order - target_block_sums.close_idx)
            as future_block_{{ k }}
        {%- endfor %}
    from (
        -- Σ_{j=0}^{B−1} (close[s+j] − close[s]) over the B bars starting at this one
        select
            target_leads.pair,
            target_leads.ts_utc,
            target_leads.close_idx,
            target_leads.close_idx - target_leads.close_idx
            {%- for j in range(1, block) %}
            + (lead(target_leads.close_idx, {{ j }}) over bars_in_order - target_leads.close_idx)
            {%- endfor %} as block_sum
        from {{ source }} as target_leads
        window bars_in_order as (partition by target_leads.pair order by target_leads.ts_utc)
    ) as target_block_sums
    window bars_in_order as (partition by target_block_sums.pair order by target_block_sums.ts_utc)
) as target_blocks
{%- endmacro %}
