{#-
    REG: closed-form quadratic least squares over the W bars ending at t, for W in
    var('reg_windows'). The maths, the measured options and the precision are documented in
    macros/features/regression.yml; the short version is at reg_ctes below.
-#}

{#- The output columns, in order: reg_{a,b,c,r2,rmse,endpoint}_w{W} for W in var('reg_windows'). -#}
{% macro reg_column_names() -%}
    {{ return(reg_columns('rate') | map(attribute='name') | list) }}
{%- endmacro %}


{#- The column specs (macros/catalog/feature_columns.sql) of reg_rate (domain 'rate': endpoint a
    ratio) or reg_bqx ('bqx': endpoint a difference): one template per metric, filled per window. -#}
{% macro reg_columns(domain) -%}
    {%- set series = feature_series(domain) -%}
    {%- set endpoint = {
        'rate': '{y}[t] / {y}[t-{w1}] - 1: the relative change over the window\'s span.',
        'bqx': 'y[t] - y[t-{w1}]: the change of the BQX series over the window\'s span (a difference: the
            series is itself relative and crosses 0).',
    } -%}
    {%- set metrics = [
        {'name': 'reg_a_w{w}', 'template': 'Curvature coefficient a of the least-squares quadratic
            y ≈ a·x² + b·x + c fitted to {series} over the {w} bars t-{w1} .. t (window {w} bars, var reg_windows),
            x = -{w1} .. 0 (x = 0 is bar t); 2a is the curvature. Exactly 0 on a flat window.'},
        {'name': 'reg_b_w{w}', 'template': 'Slope b of the least-squares quadratic over the {w} bars
            t-{w1} .. t (reg_a_w{w}): the fitted slope at bar t (x = 0), in units of y per bar. Exactly 0 on a
            flat window.'},
        {'name': 'reg_c_w{w}', 'template': 'Intercept c of the least-squares quadratic over the {w} bars
            t-{w1} .. t (reg_a_w{w}): the fitted value at bar t (x = 0); y[t] on a flat window.'},
        {'name': 'reg_r2_w{w}', 'template': 'R² = 1 - SSE/SST of the least-squares quadratic over the {w}
            bars t-{w1} .. t (reg_a_w{w}; SSE the squared residuals, SST the squared deviations from the
            window\'s mean), in [0, 1].',
            'null_when': 'SST = 0: a flat window (every value equal; reg_rmse_w{w} = 0 then)',
            'null_allowed_when': 'reg_rmse_w{w} = 0'},
        {'name': 'reg_rmse_w{w}', 'template': 'Root mean squared residual of the least-squares quadratic
            over the {w} bars t-{w1} .. t (reg_a_w{w}): sqrt(SSE / {w}), SSE clamped at >= 0; 0 on a flat
            window.'},
        {'name': 'reg_endpoint_w{w}', 'template': endpoint[domain],
            'never_null_because': 'close_idx > 0' if domain == 'rate' else none},
    ] -%}
    {%- set precision = 'float8, within 1e-9 of numpy.polyfit on each window (measured at worst '
        ~ ('1.3e-10 (r2)' if domain == 'rate' else '5e-11') ~ ' of the column\'s largest |value|)' -%}
    {{ return(windowed_columns(metrics, var('reg_windows'), series, precision)) }}
{%- endmacro %}


{#- Block length B (bars): the smallest even number >= max(reg_windows), so that a window spans
    at most two consecutive blocks. -#}
{% macro reg_block_bars() -%}
    {%- set longest = var('reg_windows') | max -%}
    {{ return(longest + longest % 2) }}
{%- endmacro %}


{#- The composite type carrying a window's start values through lag(): one fetch per window
    instead of six scalar lags (measured: 1.3x cheaper). -#}
{% macro reg_window_start_type() -%}
    {{ return('bqx_functions.reg_window_start') }}
{%- endmacro %}


{#- Part of on-run-start (create_project_functions): creates the type, or recreates it when its
    layout differs from this one (an upgrade); concurrent runs race safely. -#}
{% macro create_reg_window_start_type() -%}
{%- set fields = ['l0_grid', 'l0_rest', 'l1', 'l2', 'lq_grid', 'lq_rest', 'first_y'] -%}
create schema if not exists bqx_functions;
do $reg_type$
begin
    if coalesce((
        select string_agg(attribute.attname, ',' order by attribute.attnum)
        from pg_catalog.pg_attribute as attribute
        where attribute.attrelid = to_regclass('{{ reg_window_start_type() }}')
            and attribute.attnum > 0 and not attribute.attisdropped
    ), '') <> '{{ fields | join(",") }}' then
        drop type if exists {{ reg_window_start_type() }};
        create type {{ reg_window_start_type() }} as (
            {%- for field in fields %}
            {{ field }} double precision{{ "," if not loop.last }}
            {%- endfor %}
        );
    end if;
exception when duplicate_object or unique_violation then null;
end
$reg_type$
{%- endmacro %}


{#- A float8 literal of a constant computed at compile time (shortest round-trip repr). -#}
{% macro reg_float(value) -%}
    {%- set text = (value | float) | string -%}
    {{- text if ('.' in text or 'e' in text or 'inf' in text or 'nan' in text) else text ~ '.0' -}}
{%- endmacro %}


{#-
    CTEs computing the REG columns of `rows_cte` (pair, ts_utc, bar_number, is_new and `series`),
    read from a multiple of reg_block_bars() minus one bar (the block's reference), ending in
    `reg_values` (pair, ts_utc, is_new, reg_column_names()...).
    endpoint: 'ratio' gives y[t] / y[t-W+1] - 1 (rate domain), 'difference' y[t] - y[t-W+1] (bqx).
    reference: 'block' measures y from a reference per block (the bar before the block: series
    far from 0, like an index); 'zero' from 0 (a series centred on 0, like bqx).

    Per window W, with x = -(W-1) .. 0 and u = x + (W-1)/2, the least-squares quadratic in the
    orthogonal basis 1, u, u^2 - (W^2-1)/12 needs only the window sums S0 = sum(z),
    S1 = sum(u z), S2 = sum(u^2 z), SQ = sum(z^2) of z = y - r. They come from running sums that
    restart every B bars (B = reg_block_bars() >= max W), weighted by the bar's centred position
    lx in its block: a window is "its block up to t minus the block before its first bar s" or,
    when s lies in the previous block, "its block up to t plus the rest of the previous block
    from s". The part at s is computed at s (moments about s, moved to the window's centre and
    to the next block's reference) and fetched at t by one lag per window.
    Exactness where it matters: z is split into z_grid (z rounded to 2^-18, references too) and
    z_rest; the sums of z_grid and z_grid^2 are exact in float8, so W * SST = W SQ - S0^2 is
    exact in its large part and a quiet window's SST is not lost against the level or against
    larger values earlier in the block. O(1) per row and window; see macros/features/regression.yml.
-#}
{% macro reg_ctes(rows_cte, series, endpoint='ratio', reference='block') -%}
{%- set block = reg_block_bars() | int -%}
{%- set half = (block / 2) | int -%}
{%- set grid = 262144.0 -%}
{%- set start_type = reg_window_start_type() -%}
reg_numbered as (
    select
        reg_rows.pair,
        reg_rows.ts_utc,
        reg_rows.is_new,
        reg_rows.{{ series }} as y,
        round(reg_rows.{{ series }} * {{ grid }}) / {{ grid }} as y_grid,
        -- absolute position in the pair (bar_number): blocks where a full build puts them
        reg_rows.bar_number as bar_index,
        (reg_rows.{{ series }} is distinct from lag(reg_rows.{{ series }}) over bars_in_order) as changed
    from {{ rows_cte }} as reg_rows
    window bars_in_order as (partition by reg_rows.pair order by reg_rows.ts_utc)
),

reg_referenced as (
    -- ref: {{ 'the bar before the block (the first bar for block 0) on the 2^-18 grid, 0 where NULL' if reference == 'block' else '0 (a series centred on 0)' }},
    -- z = y - ref and z_grid its part on the 2^-18 grid (sums of z_grid and z_grid^2 are exact),
    -- since_change: bars since the last bar whose value differs from its predecessor's (a window
    -- of W bars is flat when since_change >= W - 1: no change follows its first bar)
    {%- if reference == 'block' %}
    {%- set ref_expr -%}
        coalesce(
            lag(y_grid, case when bar_index < {{ block }} then bar_index else bar_index % {{ block }} + 1 end)
                over running_bars,
            0.0
        )
    {%- endset %}
    {%- else %}
    {%- set ref_expr = '0.0' %}
    {%- endif %}
    select
        pair,
        ts_utc,
        is_new,
        y,
        y_grid,
        bar_index / {{ block }} as block,
        (bar_index % {{ block }} - {{ half }})::double precision as lx,
        ({{ ref_expr }})::double precision as ref,
        coalesce(y - {{ ref_expr }}, 0.0) as z,
        round(coalesce(y - {{ ref_expr }}, 0.0) * {{ grid }}) / {{ grid }} as z_grid,
        bar_index - max(case when changed then bar_index end) over running_bars as since_change
    from reg_numbered
    window running_bars as (partition by pair order by ts_utc rows unbounded preceding)
),

reg_terms as (
    -- zz_grid = z_grid^2 on the 2^-36 grid, zz_rest = z^2 - zz_grid (small)
    select
        pair,
        ts_utc,
        is_new,
        y,
        y_grid,
        block,
        lx,
        ref,
        since_change,
        z_grid,
        z - z_grid as z_rest,
        lx * z as lz,
        lx * lx * z as llz,
        z_grid * z_grid as zz_grid,
        (z - z_grid) * (z + z_grid) as zz_rest
    from reg_referenced
),

reg_block_sums as (
    select
        pair,
        ts_utc,
        is_new,
        y,
        y_grid,
        block,
        lx,
        ref,
        since_change,
        z_grid,
        z_rest,
        lz,
        llz,
        zz_grid,
        zz_rest,
        sum(z_grid) over running_block as p0_grid,
        sum(z_rest) over running_block as p0_rest,
        sum(lz) over running_block as p1,
        sum(llz) over running_block as p2,
        sum(zz_grid) over running_block as pq_grid,
        sum(zz_rest) over running_block as pq_rest
    from reg_terms
    window running_block as (partition by pair, block order by ts_utc rows unbounded preceding)
),

reg_block_moments as (
    -- About this bar, from running sums p* (the block up to it) and whole-block sums:
    -- n*: minus the moments of the block before it (for s when t is in the same block);
    -- r*: the rest of the block from it, moved to the next block's reference by delta (for s
    -- when t is in the next block: n_rest bars at positions 0 .. n_rest - 1 from it);
    -- a*: the block up to it (for t). The columns lag() reads come first (a fetched row is
    -- decoded that far). Written out in one select: a separate CTE would hide the sort order.
    {%- set x0 = '((p0_grid - z_grid) + (p0_rest - z_rest))' %}
    {%- set t0 = '(sum(z_grid) over whole_block - p0_grid + z_grid + sum(z_rest) over whole_block - p0_rest + z_rest)' %}
    {%- set t1 = '(sum(lz) over whole_block - p1 + lz)' %}
    {%- if reference == 'block' %}
    {%- set delta = '(coalesce(last_value(y_grid) over whole_block, 0.0) - ref)' %}
    {%- else %}
    {%- set delta = '0.0' %}
    {%- endif %}
    {%- set n_rest = '(' ~ half ~ '.0 - lx)' %}
    select
        lx,
        y,
        z_grid - p0_grid as n0_grid,
        z_rest - p0_rest as n0_rest,
        lx * {{ x0 }} - (p1 - lz) as n1s,
        -((p2 - llz) - 2.0 * lx * (p1 - lz) + lx * lx * {{ x0 }}) as n2s,
        zz_grid - pq_grid as nq_grid,
        zz_rest - pq_rest as nq_rest,
        {%- if reference == 'block' %}
        sum(z_grid) over whole_block - p0_grid + z_grid - {{ delta }} * {{ n_rest }} as r0_grid,
        sum(z_rest) over whole_block - p0_rest + z_rest as r0_rest,
        {{ t1 }} - lx * {{ t0 }} - {{ delta }} * {{ n_rest }} * ({{ n_rest }} - 1.0) * 0.5 as r1s,
        (sum(llz) over whole_block - p2 + llz) - 2.0 * lx * {{ t1 }} + lx * lx * {{ t0 }}
        - {{ delta }} * ({{ n_rest }} - 1.0) * {{ n_rest }} * (2.0 * {{ n_rest }} - 1.0) * {{ reg_float(1.0 / 6.0) }}
            as r2s,
        (sum(zz_grid) over whole_block - pq_grid + zz_grid)
        - 2.0 * {{ delta }} * (sum(z_grid) over whole_block - p0_grid + z_grid)
        + {{ delta }} * {{ delta }} * {{ n_rest }} as rq_grid,
        (sum(zz_rest) over whole_block - pq_rest + zz_rest)
        - 2.0 * {{ delta }} * (sum(z_rest) over whole_block - p0_rest + z_rest) as rq_rest,
        {%- else %}
        sum(z_grid) over whole_block - p0_grid + z_grid as r0_grid,
        sum(z_rest) over whole_block - p0_rest + z_rest as r0_rest,
        {{ t1 }} - lx * {{ t0 }} as r1s,
        (sum(llz) over whole_block - p2 + llz) - 2.0 * lx * {{ t1 }} + lx * lx * {{ t0 }} as r2s,
        sum(zz_grid) over whole_block - pq_grid + zz_grid as rq_grid,
        sum(zz_rest) over whole_block - pq_rest + zz_rest as rq_rest,
        {%- endif %}
        pair,
        ts_utc,
        block,
        is_new,
        ref,
        since_change,
        p0_grid,
        p0_rest,
        p0_grid + p0_rest as p0,
        pq_grid,
        pq_rest,
        p1 - lx * (p0_grid + p0_rest) as a1,
        p2 - 2.0 * lx * p1 + lx * lx * (p0_grid + p0_rest) as a2
    from reg_block_sums
    window whole_block as (
        partition by pair, block order by ts_utc rows between unbounded preceding and unbounded following
    )
),

reg_window_starts as (
    -- per window: the part of its first bar s = t - W + 1, fetched by lag, about the window's
    -- centre (positions from s shifted by m = -(W-1)/2); l2 holds S2 - (W^2-1)/12 S0 (the
    -- weight u^2 - (W^2-1)/12 of the orthogonal basis), so that t adds no term for it
    select
        pair,
        ts_utc,
        is_new,
        y,
        ref,
        since_change,
        p0_grid,
        p0_rest,
        p0,
        pq_grid,
        pq_rest,
        a1,
        a2
        {%- for window in var('reg_windows') %}
        {%- set m = -(window - 1) / 2.0 %}
        {%- set k = (window * window - 1) / 12.0 %},
        lag(
            case
                when y is null then null
                when lx <= {{ half - window }}
                    then row(
                        n0_grid,
                        n0_rest,
                        n1s + {{ reg_float(m) }} * (n0_grid + n0_rest),
                        n2s + {{ reg_float(2 * m) }} * n1s + {{ reg_float(m * m - k) }} * (n0_grid + n0_rest),
                        nq_grid,
                        nq_rest,
                        y
                    )::{{ start_type }}
                else row(
                    r0_grid,
                    r0_rest,
                    r1s + {{ reg_float(m) }} * (r0_grid + r0_rest),
                    r2s + {{ reg_float(2 * m) }} * r1s + {{ reg_float(m * m - k) }} * (r0_grid + r0_rest),
                    rq_grid,
                    rq_rest,
                    y
                )::{{ start_type }}
            end,
            {{ window - 1 }}
        ) over bars_in_order as start_w{{ window }}
        {%- endfor %}
    from reg_block_moments
    window bars_in_order as (partition by pair order by block, ts_utc)
),

reg_window_sums as (
    -- window sums about the window's centre on the reference of t's block: the part of t's block
    -- up to t plus the part fetched from s, each field of a start value read once (the fence
    -- keeps the levels below from being inlined into every reference above)
    select
        pair,
        ts_utc,
        is_new,
        y,
        ref
        {%- for window in var('reg_windows') %}
        {%- set m = -(window - 1) / 2.0 %}
        {%- set k = (window * window - 1) / 12.0 %}
        {%- set start = 'start_w' ~ window %},
        since_change >= {{ window - 1 }} as flat_w{{ window }},
        ({{ start }}).first_y as first_w{{ window }},
        p0_grid + ({{ start }}).l0_grid as s0_grid_w{{ window }},
        p0_rest + ({{ start }}).l0_rest as s0_rest_w{{ window }},
        a1 - {{ reg_float(m) }} * p0 + ({{ start }}).l1 as s1_w{{ window }},
        a2 - {{ reg_float(2 * m) }} * a1 + {{ reg_float(m * m - k) }} * p0 + ({{ start }}).l2 as s2k_w{{ window }},
        pq_grid + ({{ start }}).lq_grid as sq_grid_w{{ window }},
        pq_rest + ({{ start }}).lq_rest as sq_rest_w{{ window }}
        {%- endfor %}
        {{- planner_fence_column('reg_window_starts') }}
    from reg_window_starts
    {{ planner_fence() }}
),

reg_moments as (
    -- sst = SQ - S0^2 / W with its grid part (W SQ_grid - S0_grid^2) exact in float8: nothing is
    -- lost to the level of z; beta1, beta2: coefficients of u and u^2 - (W^2-1)/12 in the
    -- orthogonal basis (0 on a flat window)
    select
        pair,
        ts_utc,
        is_new,
        y
        {%- for window in var('reg_windows') %}
        {%- set su = window * (window * window - 1) / 12.0 %}
        {%- set sp = window * (window * window - 1) * (window * window - 4) / 180.0 %}
        {%- set s0_grid = 's0_grid_w' ~ window %}
        {%- set s0_rest = 's0_rest_w' ~ window %},
        flat_w{{ window }},
        first_w{{ window }},
        s1_w{{ window }},
        s2k_w{{ window }},
        ref + ({{ s0_grid }} + {{ s0_rest }}) * {{ reg_float(1.0 / window) }} as mean_w{{ window }},
        (
            ({{ window }}.0 * sq_grid_w{{ window }} - {{ s0_grid }} * {{ s0_grid }})
            + ({{ window }}.0 * sq_rest_w{{ window }} - {{ s0_rest }} * (2.0 * {{ s0_grid }} + {{ s0_rest }}))
        ) * {{ reg_float(1.0 / window) }} as sst_w{{ window }},
        case when flat_w{{ window }} then 0.0 else s1_w{{ window }} * {{ reg_float(1.0 / su) }} end as beta1_w{{ window }},
        case when flat_w{{ window }} then 0.0 else s2k_w{{ window }} * {{ reg_float(1.0 / sp) }} end as beta2_w{{ window }}
        {%- endfor %}
        {{- planner_fence_column('reg_window_sums') }}
    from reg_window_sums
    {{ planner_fence() }}
),

reg_fits as (
    -- sse = sst - beta1^2 Su - beta2^2 Sp = sst - beta1 S1 - beta2 (S2 - (W^2-1)/12 S0), clamped
    -- at 0 (exactly 0 on a flat window, NULL in the warm-up)
    select
        pair,
        ts_utc,
        is_new,
        y
        {%- for window in var('reg_windows') %},
        flat_w{{ window }},
        first_w{{ window }},
        mean_w{{ window }},
        sst_w{{ window }},
        beta1_w{{ window }},
        beta2_w{{ window }},
        case
            when flat_w{{ window }} then 0.0
            when s1_w{{ window }} is null then null
            else greatest(
                sst_w{{ window }} - beta1_w{{ window }} * s1_w{{ window }} - beta2_w{{ window }} * s2k_w{{ window }}, 0.0
            )
        end as sse_w{{ window }}
        {%- endfor %}
        {{- planner_fence_column('reg_moments') }}
    from reg_moments
    {{ planner_fence() }}
),

reg_values as (
    -- a = beta2, b = the slope at x = 0, c = the fitted value at x = 0
    select
        pair,
        ts_utc,
        is_new
        {%- for window in var('reg_windows') %}
        {%- set m = -(window - 1) / 2.0 %}
        {%- set k = (window * window - 1) / 12.0 %},
        beta2_w{{ window }} as reg_a_w{{ window }},
        beta1_w{{ window }} - {{ reg_float(2 * m) }} * beta2_w{{ window }} as reg_b_w{{ window }},
        mean_w{{ window }} - {{ reg_float(m) }} * beta1_w{{ window }}
        + {{ reg_float(m * m - k) }} * beta2_w{{ window }} as reg_c_w{{ window }},
        case
            when not flat_w{{ window }} and sst_w{{ window }} > 0.0
                then 1.0 - least(sse_w{{ window }}, sst_w{{ window }}) / sst_w{{ window }}
        end as reg_r2_w{{ window }},
        sqrt(sse_w{{ window }} * {{ reg_float(1.0 / window) }}) as reg_rmse_w{{ window }},
        {%- if endpoint == 'ratio' %}
        y / nullif(first_w{{ window }}, 0.0) - 1.0 as reg_endpoint_w{{ window }}
        {%- else %}
        y - first_w{{ window }} as reg_endpoint_w{{ window }}
        {%- endif %}
        {%- endfor %}
    from reg_fits
)
{%- endmacro %}
