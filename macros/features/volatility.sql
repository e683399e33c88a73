{#-
    Realised volatility of a series over W bars, for W in var('volatility_windows'), from its
    one-bar returns r[k] (log returns on the rate domain, differences on the BQX domain):
    ret_wW (the W-bar return), rvol_wW (realised volatility √Σr²), bpvol_wW (bipower volatility,
    robust to jumps) and er_wW (Kaufman's efficiency ratio). Documented in
    macros/features/volatility.yml (maths, warm-up, precision and why it is computed so).
-#}

{#- The output columns, in order: ret, rvol, bpvol, er for each W of var('volatility_windows'). -#}
{% macro volatility_column_names() -%}
    {{ return(volatility_columns('rate') | map(attribute='name') | list) }}
{%- endmacro %}


{#- var('volatility_windows') as integers; bipower variation needs two returns (W >= 2). -#}
{% macro volatility_windows() -%}
    {%- set windows = var('volatility_windows') | map('int') | list -%}
    {%- if windows | length == 0 or windows | min < 2 -%}
        {{ exceptions.raise_compiler_error(
            "var volatility_windows: every window must be at least 2 bars, got " ~ var('volatility_windows')) }}
    {%- endif -%}
    {{ return(windows) }}
{%- endmacro %}


{#- Bars read before the first new bar of an incremental run: a window of W returns reads the
    W + 1 values y[t-W] .. y[t]. -#}
{% macro volatility_lookback_bars() -%}
    {{ return(volatility_windows() | max) }}
{%- endmacro %}


{#- The column specs (macros/catalog/feature_columns.sql) of volatility_rate (domain 'rate': log
    returns) or volatility_bqx ('bqx': differences, the series crosses 0). -#}
{% macro volatility_columns(domain) -%}
    {%- set returns = {
        'rate': {'r': 'ln(close_idx[k] / close_idx[k-1])', 'ret': 'ln(close_idx[t] / close_idx[t-{w}]): the log return
            over the last {w} bars (the sum of the {w} one-bar log returns)'},
        'bqx': {'r': 'y[k] - y[k-1]', 'ret': 'y[t] - y[t-{w}]: the change of the BQX series over the last {w} bars
            (differences: the series is itself relative and crosses 0, so it has no log return)'},
    }[domain] -%}
    {%- set metrics = [
        {'name': 'ret_w{w}', 'template': returns.ret ~ ', window {w} bars (var volatility_windows).',
            'warmup_offset': 0, 'never_null_because': 'close_idx > 0' if domain == 'rate' else none},
        {'name': 'rvol_w{w}', 'template': 'Realised volatility √(Σ r[k]²) over the {w} one-bar returns
            k = t-{w1} ... t, r[k] = {r} (not annualised: √{w} × the per-bar volatility when returns are
            i.i.d.); exactly 0 on a flat window.', 'warmup_offset': 0},
        {'name': 'bpvol_w{w}', 'template': 'Bipower volatility √(π/2 · Σ |r[k]|·|r[k-1]|), k = t-{w2} ... t
            (the {w1} adjacent pairs of the same {w} returns; Barndorff-Nielsen & Shephard): estimates the
            continuous part of rvol_w{w}, a single jump moves it far less; rvol² − bpvol² > 0 measures the
            jumps. Exactly 0 on a flat window.', 'warmup_offset': 0},
        {'name': 'er_w{w}', 'template': 'Efficiency ratio (Kaufman) |Σ r[k]| / Σ |r[k]| over the same {w}
            returns, i.e. |ret_w{w}| over the path length: 1 for a straight move, near 0 for noise; clamped to
            [0, 1] against rounding.', 'warmup_offset': 0,
            'null_when': 'the window is flat (all {w_plus_1} values equal: no path, rvol_w{w} = 0)',
            'null_allowed_when': 'rvol_w{w} = 0'},
    ] -%}
    {%- set columns = [] -%}
    {%- for window in volatility_windows() -%}
        {%- do columns.extend(windowed_columns(
            metrics, [window], feature_series(domain),
            'float8 from float8 window sums of the returns restarted every volatility_block_bars() bars
            (bit-identical in incremental and full builds), within 1e-9 of NumPy on each window (measured at
            worst 2.4e-12 (er, rate domain) of the column\'s largest |value|, 2.3e-13 for rvol and bpvol; on a
            pair-year within 2.8e-13 of the exact numeric sums of the design before)',
            values={'r': returns.r, 'w2': window - 2, 'w_plus_1': window + 1},
        )) -%}
    {%- endfor -%}
    {{ return(columns) }}
{%- endmacro %}


{#- Block length (bars) of the restarted running sums: max(volatility_windows), so that a
    window's returns lie in its own block or in its own and the one before. -#}
{% macro volatility_block_bars() -%}
    {{ return(volatility_windows() | max) }}
{%- endmacro %}


{#-
    CTEs computing the volatility columns of `rows_cte` (pair, ts_utc, is_new, bar_number and
    `series`), ending in `volatility_values` (pair, ts_utc, is_new, volatility_column_names()...).
    Call it after `with ... as (...),` and select from volatility_values.
    returns: 'log' gives r[k] = ln(y[k] / y[k-1]) (a positive series: the rate index), 'difference'
    r[k] = y[k] - y[k-1] (a series crossing 0: bqx).

    How: the terms |r|, r² and |r[k]|·|r[k-1]| are summed in float8 by running sums restarted
    every B = volatility_block_bars() bars of the pair's absolute bar_number (X, over the block up
    to the bar) and each block's total (T, the same sum at the block's last bar). A window of n
    terms ending at t = k + n starts in k's block (block_position + n < B: its sum is
    X[t] - X[k]) or in the block before (X[t] + (T - X)[k]): bar k carries the right start for
    each window and the sum is X[t] plus one lag of it, O(1) per row whatever W (a float8 moving
    frame re-adds its W values for every row). The sums depend only on the bars of the blocks they
    span, added in the same order whether a build starts at the pair's first bar or at a block an
    incremental run reads from: an incremental run equals a full build bit for bit. A flat
    window's terms are exact zeros, so its sums are exactly 0. The count of returns per window (a
    window is full with W of them) is an exact running count differenced. Documented, with its
    precision, in macros/features/volatility.yml.
-#}
{% macro volatility_ctes(rows_cte, series, returns) -%}
{%- if returns not in ('log', 'difference') -%}
    {{ exceptions.raise_compiler_error("volatility_ctes: returns must be 'log' or 'difference', got " ~ returns) }}
{%- endif -%}
{%- set windows = volatility_windows() -%}
{%- set block = volatility_block_bars() -%}
{#- a product of terms >= 1e-150 is >= 1e-300: PostgreSQL raises on a float8 product that underflows to 0 -#}
{%- set tiny = '1e-150' -%}
volatility_returns as (
    -- r[t] = {{ 'ln(y[t] / y[t-1])' if returns == 'log' else 'y[t] - y[t-1]' }}: NULL on the first bar read and where y is NULL
    select
        volatility_rows.pair,
        volatility_rows.ts_utc,
        volatility_rows.is_new,
        volatility_rows.bar_number / {{ block }} as block,
        volatility_rows.bar_number % {{ block }} as block_position,
        volatility_rows.{{ series }} as series_value,
        {%- if returns == 'log' %}
        ln(volatility_rows.{{ series }} / lag(volatility_rows.{{ series }}) over bars_in_order) as bar_return
        {%- else %}
        volatility_rows.{{ series }} - lag(volatility_rows.{{ series }}) over bars_in_order as bar_return
        {%- endif %}
    from {{ rows_cte }} as volatility_rows
    window bars_in_order as (partition by volatility_rows.pair order by volatility_rows.ts_utc)
),

volatility_terms as (
    -- |r|, r² and |r[t]|·|r[t-1]| in float8 (a term below 1e-150 counts as 0 in a product)
    select
        pair,
        ts_utc,
        is_new,
        block,
        block_position,
        series_value,
        bar_return,
        abs(bar_return) as abs_return,
        case when abs(bar_return) >= {{ tiny }} then bar_return * bar_return else 0.0 end as squared_return,
        case
            when abs(bar_return) >= {{ tiny }} and abs(lag(bar_return) over bars_in_order) >= {{ tiny }}
                then abs(bar_return) * abs(lag(bar_return) over bars_in_order)
            when bar_return is not null and lag(bar_return) over bars_in_order is not null then 0.0
        end as adjacent_product
    from volatility_returns
    window bars_in_order as (partition by pair order by ts_utc)
),

volatility_running as (
    -- per block: the sums of the terms up to the bar (X) and over the whole block (T, equal to
    -- X on its last bar); per pair: the running count of returns
    select
        pair,
        ts_utc,
        is_new,
        block,
        block_position,
        series_value,
        count(bar_return) over running_pair as return_count,
        {%- for term in ('abs_return', 'squared_return', 'adjacent_product') %}
        coalesce(sum({{ term }}) over running_block, 0.0) as {{ term }}_running,
        coalesce(sum({{ term }}) over whole_block, 0.0) as {{ term }}_block{{ ',' if not loop.last }}
        {%- endfor %}
    from volatility_terms
    window
        block_bars as (partition by pair, block order by ts_utc),
        running_block as (block_bars rows unbounded preceding),
        whole_block as (block_bars rows between unbounded preceding and unbounded following),
        running_pair as (partition by pair order by block, ts_utc rows unbounded preceding)
),

volatility_starts as (
    -- what a window of n terms ending n bars later needs of this bar k: -X[k] when it ends in
    -- k's block (block_position + n < B), else T - X[k] (the rest of k's block): its sum is then
    -- X[t] + this, one lag per window and sum
    select
        pair,
        ts_utc,
        is_new,
        block,
        series_value,
        return_count,
        abs_return_running,
        squared_return_running,
        adjacent_product_running
        {%- for w in windows %}
        {%- for term, terms in [('abs_return', w), ('squared_return', w), ('adjacent_product', w - 1)] %},
        case
            when block_position + {{ terms }} < {{ block }} then -{{ term }}_running
            else {{ term }}_block - {{ term }}_running
        end as {{ term }}_start_{{ terms }}_w{{ w }}
        {%- endfor %}
        {%- endfor %}
    from volatility_running
),

volatility_sums as (
    -- per window, from bar t-W in one fetch (a float8[]: one lag instead of four): y[t-W], the
    -- count of returns and the starts of the |r| and r² sums; the products' sum (W - 1 of them,
    -- t-W+2 .. t) from bar t-W+1
    select
        pair,
        ts_utc,
        is_new,
        series_value,
        return_count,
        abs_return_running,
        squared_return_running,
        adjacent_product_running
        {%- for w in windows %},
        lag(array[series_value, return_count, abs_return_start_{{ w }}_w{{ w }}, squared_return_start_{{ w }}_w{{ w }}], {{ w }}) over bars_in_order as starts_w{{ w }},
        adjacent_product_running + lag(adjacent_product_start_{{ w - 1 }}_w{{ w }}, {{ w - 1 }}) over bars_in_order as product_sum_w{{ w }}
        {%- endfor %}
    from volatility_starts
    -- the order of the blocks' sort, the same as ts_utc's: no second sort
    window bars_in_order as (partition by pair order by block, ts_utc)
),

volatility_unpacked as (
    -- per window: y[t-W], the count of returns t-W+1 .. t and the sums of their terms
    select
        pair,
        ts_utc,
        is_new,
        series_value
        {%- for w in windows %},
        starts_w{{ w }}[1] as start_value_w{{ w }},
        return_count - starts_w{{ w }}[2] as return_count_w{{ w }},
        abs_return_running + starts_w{{ w }}[3] as abs_sum_w{{ w }},
        squared_return_running + starts_w{{ w }}[4] as squared_sum_w{{ w }},
        product_sum_w{{ w }}
        {%- endfor %}
    from volatility_sums
),

volatility_values as (
    -- every column NULL unless the window holds W returns; er NULL on a flat window (no path)
    select
        volatility_unpacked.pair,
        volatility_unpacked.ts_utc,
        volatility_unpacked.is_new
        {%- for w in windows %}
        {%- set full = 'volatility_unpacked.return_count_w' ~ w ~ ' = ' ~ w %}
        {%- if returns == 'log' %}
        {%- set window_return = 'ln(volatility_unpacked.series_value / volatility_unpacked.start_value_w' ~ w ~ ')' %}
        {%- else %}
        {%- set window_return = 'volatility_unpacked.series_value - volatility_unpacked.start_value_w' ~ w %}
        {%- endif %},
        case when {{ full }} then {{ window_return }} end as ret_w{{ w }},
        case when {{ full }} then sqrt(volatility_unpacked.squared_sum_w{{ w }}) end as rvol_w{{ w }},
        case when {{ full }} then sqrt(pi() / 2 * volatility_unpacked.product_sum_w{{ w }}) end as bpvol_w{{ w }},
        case
            when {{ full }} and volatility_unpacked.abs_sum_w{{ w }} > 0
                then least(abs({{ window_return }}) / volatility_unpacked.abs_sum_w{{ w }}, 1.0)
        end as er_w{{ w }}
        {%- endfor %}
    from volatility_unpacked
)
{%- endmacro %}
