{#-
    Prediction targets (mart targets): the maths lives here once; documented in
    macros/features/targets.yml. Not a feature: a target at t reads the H bars after t.
-#}

{% macro target_column_names() -%}
    {{ return(target_columns() | map(attribute='column') | list) }}
{%- endmacro %}


{#- The targets, in order: column, horizon H in bars and description (the catalog's
    TargetColumn; the YAML's column entries). -#}
{% macro target_columns() -%}
    {%- set targets = [] -%}
    {%- for h in var('target_horizons') | map('int') -%}
        {%- do targets.append({
            'column': 'target_bqx_h' ~ h,
            'horizon_bars': h,
            'description': ('(mean(close_idx[t+1 ... t+{h}]) - close_idx[t]) / close_idx[t]: the mean of the next {h}
                bars\' index relative to the current close (var target_horizons). NULL exactly on the pair\'s last
                {h} rows (fewer than {h} future bars). Precision: float8 from exact fixed-point running sums, within
                1e-9 of NumPy on each window (measured ≤ 6e-13 of the column\'s largest |value|).').format(h=h).split()
                | join(' '),
        }) -%}
    {%- endfor -%}
    {{ return(targets) }}
{%- endmacro %}


{#- Bars before a changed bar whose targets an incremental run recomputes: a target at t reads
    up to max(H) bars after t, so changing bar s changes the targets at s - max(H) .. s. -#}
{% macro targets_recompute_bars() -%}
    {{ return(var('target_horizons') | max) }}
{%- endmacro %}


{#- A select over `source` (pair, ts_utc, is_new, close_idx) giving pair, ts_utc, is_new and
    every column of target_column_names().

    Σ_{j=1}^{H} (close[t+j] − close[t]) from running sums differenced with lead(): O(1) per row
    (one running-frame WindowAgg, then one lead per part and horizon), where float8 avg() over
    a moving frame re-adds its H values for every row and horizon (float8 has no inverse
    transition). A plain float8 running sum of closes would carry a rounding error proportional
    to the pair's whole history (Σ close ≈ 100 × bars) into every difference, so each close is
    split EXACTLY into integers (held in float8) of 16 + 18 + 18 bits:
      whole  = floor(close · 2^16)
      middle = floor((close · 2^16 − whole) · 2^18)
      low    = ((close · 2^16 − whole) · 2^18 − middle) · 2^18
    close = whole / 2^16 + middle / 2^34 + low / 2^52 exactly when close ≥ 1 (its last bit is
    then ≥ 2^-52; close_idx is 100 at the baseline). Running sums of integers are exact while
    below 2^53: a pair's Σ whole passes 2^53 only after 2^37 / close bars (1.3e9 at 100). So
    ΔS − H·part[t] is an exact integer for each part, and
      Σ (close[t+j] − close[t]) = Σ_part (ΔS_part − H · part[t]) / 2^shift
    rounds only in the final additions: nothing cancels against the price level, each target
    depends only on its own H + 1 closes (an incremental run, which starts its running sums
    later, is bit-identical to a full build, and changing bar s changes exactly the targets at
    s − H .. s). A pair with fewer than H bars after t has no lead: the target is NULL
    (close_idx is NOT NULL in m1_index). -#}
{% macro targets_sql(source) -%}
{%- set horizons = var('target_horizons') | map('int') | unique | sort | list -%}
{#- close = whole / 2^16 + middle / 2^34 + low / 2^52: a part's shift is its bits so far -#}
{%- set whole_bits, fraction_bits = 16, 18 -%}
{%- set parts = [
    {'name': 'whole', 'shift': whole_bits},
    {'name': 'middle', 'shift': whole_bits + fraction_bits},
    {'name': 'low', 'shift': whole_bits + 2 * fraction_bits},
] -%}
select
    target_sums.pair,
    target_sums.ts_utc,
    target_sums.is_new,
    {%- for h in horizons %}
    {#- bar t+H's running sums of the three parts in one fetch: a float8[] lead instead of three
        (the same call, written once per part, is computed once per row) #}
    {%- set sums = [] %}{% for part in parts %}{% do sums.append('target_sums.' ~ part.name ~ '_sum') %}{% endfor %}
    {%- set ahead = '(lead(array[' ~ sums | join(', ') ~ '], ' ~ h ~ ') over bars_in_order)' %}
    (
        {%- for part in parts %}
        (
            {{ ahead }}[{{ loop.index }}]
            - target_sums.{{ part.name }}_sum - {{ h }} * target_sums.close_{{ part.name }}
        ) / {{ 2 ** part.shift }}.0{{ " +" if not loop.last }}
        {%- endfor %}
    ) / {{ h }}.0 / target_sums.close_idx as target_bqx_h{{ h }}{{ "," if not loop.last }}
    {%- endfor %}
from (
    -- running sums of the parts, per pair from its first row read
    select
        target_parts.pair,
        target_parts.ts_utc,
        target_parts.is_new,
        target_parts.close_idx
        {%- for part in parts %},
        target_parts.close_{{ part.name }},
        sum(target_parts.close_{{ part.name }}) over running_bars as {{ part.name }}_sum
        {%- endfor %}
    from (
        select
            scaled_closes.pair,
            scaled_closes.ts_utc,
            scaled_closes.is_new,
            scaled_closes.close_idx,
            scaled_closes.close_whole,
            floor(scaled_closes.fraction * {{ 2 ** fraction_bits }}) as close_middle,
            (scaled_closes.fraction * {{ 2 ** fraction_bits }} - floor(scaled_closes.fraction * {{ 2 ** fraction_bits }}))
            * {{ 2 ** fraction_bits }} as close_low
        from (
            select
                whole_closes.pair,
                whole_closes.ts_utc,
                whole_closes.is_new,
                whole_closes.close_idx,
                whole_closes.close_whole,
                whole_closes.close_idx * {{ 2 ** whole_bits }} - whole_closes.close_whole as fraction
            from (
                select
                    target_closes.pair,
                    target_closes.ts_utc,
                    target_closes.is_new,
                    target_closes.close_idx,
                    floor(target_closes.close_idx * {{ 2 ** whole_bits }}) as close_whole
                    {{- planner_fence_column('target_closes') }}
                from {{ source }} as target_closes
                {{ planner_fence('target_closes') }}
            ) as whole_closes
        ) as scaled_closes
    ) as target_parts
    window running_bars as (
        partition by target_parts.pair order by target_parts.ts_utc rows unbounded preceding
    )
) as target_sums
window bars_in_order as (partition by target_sums.pair order by target_sums.ts_utc)
{%- endmacro %}
