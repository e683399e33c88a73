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
            'float8 from exact numeric window sums of the returns (each |r| rounded once to 15 significant
            digits), within 1e-9 of NumPy on each window (measured at worst 2.5e-12 (er, rate domain) of the
            column\'s largest |value|, 2.3e-13 for rvol and bpvol)',
            values={'r': returns.r, 'w2': window - 2, 'w_plus_1': window + 1},
        )) -%}
    {%- endfor -%}
    {{ return(columns) }}
{%- endmacro %}


{#-
    CTEs computing the volatility columns of `rows_cte` (pair, ts_utc, is_new and `series`),
    ending in `volatility_values` (pair, ts_utc, is_new, volatility_column_names()...). Call it
    after `with ... as (...),` and select from volatility_values.
    returns: 'log' gives r[k] = ln(y[k] / y[k-1]) (a positive series: the rate index), 'difference'
    r[k] = y[k] - y[k-1] (a series crossing 0: bqx).

    How: |r| is cast to numeric once (float8 → numeric keeps 15 significant digits), so |r|², the
    products |r[k]|·|r[k-1]| and their running sums over the pair are exact; a window's sum is the
    difference of two running sums (one running pass and one lag per window and sum: O(1) per row
    whatever W, where a float8 moving frame re-adds its W values for every row). Exact sums depend
    only on their own terms: an incremental run, which starts the running sums later, equals a
    full build bit for bit, and a flat window sums to exactly 0. A window is full when it holds W
    non-NULL returns (the bqx series is NULL on its own warm-up).
-#}
{% macro volatility_ctes(rows_cte, series, returns) -%}
{%- if returns not in ('log', 'difference') -%}
    {{ exceptions.raise_compiler_error("volatility_ctes: returns must be 'log' or 'difference', got " ~ returns) }}
{%- endif -%}
{%- set windows = volatility_windows() -%}
volatility_returns as (
    -- r[t] = {{ 'ln(y[t] / y[t-1])' if returns == 'log' else 'y[t] - y[t-1]' }}: NULL on the first bar read and where y is NULL
    select
        volatility_rows.pair,
        volatility_rows.ts_utc,
        volatility_rows.is_new,
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
    -- |r| in numeric, and the exact products |r|² and |r[t]|·|r[t-1]|
    select
        volatility_returns.pair,
        volatility_returns.ts_utc,
        volatility_returns.is_new,
        volatility_returns.series_value,
        volatility_returns.bar_return,
        abs(volatility_returns.bar_return)::numeric as abs_return,
        abs(volatility_returns.bar_return)::numeric * abs(volatility_returns.bar_return)::numeric as squared_return,
        abs(volatility_returns.bar_return)::numeric
        * abs(lag(volatility_returns.bar_return) over bars_in_order)::numeric as adjacent_product
    from volatility_returns
    window bars_in_order as (partition by volatility_returns.pair order by volatility_returns.ts_utc)
),

volatility_running as (
    -- running counts and exact sums over the pair's bars read so far (0 before the first term:
    -- the first bar read has no return, and a window's sum subtracts the total before it)
    select
        volatility_terms.pair,
        volatility_terms.ts_utc,
        volatility_terms.is_new,
        volatility_terms.series_value,
        count(volatility_terms.bar_return) over running_bars as return_count,
        coalesce(sum(volatility_terms.abs_return) over running_bars, 0) as abs_total,
        coalesce(sum(volatility_terms.squared_return) over running_bars, 0) as squared_total,
        coalesce(sum(volatility_terms.adjacent_product) over running_bars, 0) as product_total
    from volatility_terms
    window running_bars as (
        partition by volatility_terms.pair order by volatility_terms.ts_utc rows unbounded preceding
    )
),

volatility_sums as (
    -- per window: the sums over the W returns t-W+1 .. t (the W - 1 products t-W+2 .. t), and y[t-W]
    select
        volatility_running.pair,
        volatility_running.ts_utc,
        volatility_running.is_new,
        volatility_running.series_value
        {%- for w in windows %},
        lag(volatility_running.series_value, {{ w }}) over bars_in_order as start_value_w{{ w }},
        volatility_running.return_count - lag(volatility_running.return_count, {{ w }}) over bars_in_order
            as return_count_w{{ w }},
        (volatility_running.abs_total - lag(volatility_running.abs_total, {{ w }}) over bars_in_order)::double precision
            as abs_sum_w{{ w }},
        (
            volatility_running.squared_total - lag(volatility_running.squared_total, {{ w }}) over bars_in_order
        )::double precision as squared_sum_w{{ w }},
        (
            volatility_running.product_total - lag(volatility_running.product_total, {{ w - 1 }}) over bars_in_order
        )::double precision as product_sum_w{{ w }}
        {%- endfor %}
    from volatility_running
    window bars_in_order as (partition by volatility_running.pair order by volatility_running.ts_utc)
),

volatility_values as (
    -- every column NULL unless the window holds W returns; er NULL on a flat window (no path)
    select
        volatility_sums.pair,
        volatility_sums.ts_utc,
        volatility_sums.is_new
        {%- for w in windows %}
        {%- set full = 'volatility_sums.return_count_w' ~ w ~ ' = ' ~ w %}
        {%- if returns == 'log' %}
        {%- set window_return = 'ln(volatility_sums.series_value / volatility_sums.start_value_w' ~ w ~ ')' %}
        {%- else %}
        {%- set window_return = 'volatility_sums.series_value - volatility_sums.start_value_w' ~ w %}
        {%- endif %},
        case when {{ full }} then {{ window_return }} end as ret_w{{ w }},
        case when {{ full }} then sqrt(volatility_sums.squared_sum_w{{ w }}) end as rvol_w{{ w }},
        case when {{ full }} then sqrt(pi() / 2 * volatility_sums.product_sum_w{{ w }}) end as bpvol_w{{ w }},
        case
            when {{ full }} and volatility_sums.abs_sum_w{{ w }} > 0
                then least(abs({{ window_return }}) / volatility_sums.abs_sum_w{{ w }}, 1.0)
        end as er_w{{ w }}
        {%- endfor %}
    from volatility_sums
)
{%- endmacro %}
