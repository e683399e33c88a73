{#-
    BQX momentum: bqx_wW = (mean(y[t-W .. t-1]) - y[t]) / y[t], for W in var('bqx_windows').
    Documented in macros/features/bqx.yml (maths, warm-up, precision and why it is computed so).
-#}

{#- The output columns, in order: bqx_w{W} for W in var('bqx_windows'). -#}
{% macro bqx_column_names() -%}
    {{ return(bqx_columns() | map(attribute='name') | list) }}
{%- endmacro %}


{#- The column specs (macros/catalog/feature_columns.sql), one per W of var('bqx_windows'). The
    model reads close_idx only (no domain). -#}
{% macro bqx_columns(domain=none) -%}
    {%- set metrics = [{
        'name': 'bqx_w{w}',
        'template': '(mean(close_idx[t-{w} .. t-1]) - close_idx[t]) / close_idx[t]: the mean of the {w} bars
            before t (bar t excluded), relative to the close of t; positive when the price has fallen below
            its recent past (the Σ form of the original system is {w} × this). Window {w} bars
            (var bqx_windows).',
        'warmup_offset': 0,
        'never_null_because': 'close_idx > 0',
    }] -%}
    {{ return(windowed_columns(
        metrics, var('bqx_windows'), feature_series(none),
        'float8, within 1e-9 of NumPy\'s mean of each window (measured 6e-13 of the column\'s largest |value|)',
    )) }}
{%- endmacro %}


{#- Grid size (bars): every window with its current bar (W + 1 bars) lies inside one block of
    one of two block grids of 2 * G bars offset by G, when G >= max(W). -#}
{% macro bqx_grid_half() -%}
    {{ return(var('bqx_windows') | max) }}
{%- endmacro %}


{#-
    CTEs computing the BQX columns of `rows_cte` (columns pair, ts_utc, bar_number, is_new and
    `series`). Emits CTEs ending in `bqx_values` (pair, ts_utc, is_new, bar_number, bqx_w{W}...).
    An incremental read must start at a multiple of bqx_grid_half() bars, one more half block
    back (models/features/bqx/bqx.sql: grid_bars and reference_bars). Call it after a
    `with ... as (...),` and select from bqx_values.

    How: each bar's deviation from the first bar of its block (`bqx_grid_half()` * 2 bars, two
    grids offset by half a block, at fixed positions of the pair's bar_number) is summed with a
    running float8 sum restarted at each block; the sum over a window is the difference of two
    running sums taken in the grid where the whole window lies in one block, so every term is a
    small deviation (no cancellation against the price level) and each row costs O(1) whatever W (a moving float8 frame costs O(W): float8 sums have no
    inverse transition in PostgreSQL).
-#}
{% macro bqx_ctes(rows_cte, series) -%}
{%- set half = bqx_grid_half() | int -%}
{%- set block = 2 * half -%}
bqx_numbered as (
    select
        grid_rows.pair,
        grid_rows.ts_utc,
        grid_rows.is_new,
        grid_rows.{{ series }} as series_value,
        -- the bar's absolute position in its pair (m1_index.bar_number): the blocks sit where a
        -- full build puts them whatever the first bar read, so an incremental run is bit-identical
        grid_rows.bar_number as bar_index
    from {{ rows_cte }} as grid_rows
),

bqx_deviations as (
    -- deviation of each bar from the first bar of its block, in grid a and in grid b
    select
        bqx_numbered.pair,
        bqx_numbered.ts_utc,
        bqx_numbered.is_new,
        bqx_numbered.series_value,
        bqx_numbered.bar_index,
        bqx_numbered.series_value
        - lag(bqx_numbered.series_value, bqx_numbered.bar_index % {{ block }}) over bars_in_order
            as deviation_a,
        bqx_numbered.series_value
        - lag(bqx_numbered.series_value, (bqx_numbered.bar_index + {{ half }}) % {{ block }}) over bars_in_order
            as deviation_b,
        (bqx_numbered.series_value is distinct from lag(bqx_numbered.series_value) over bars_in_order) as changed
    from bqx_numbered
    window bars_in_order as (partition by bqx_numbered.pair order by bqx_numbered.ts_utc)
),

bqx_prefix_sums as (
    -- running sums of the deviations over the bars before this one (exclusive)
    select
        bqx_deviations.pair,
        bqx_deviations.ts_utc,
        bqx_deviations.is_new,
        bqx_deviations.series_value,
        bqx_deviations.bar_index,
        bqx_deviations.deviation_a,
        bqx_deviations.deviation_b,
        -- restarted at each block of its grid: the sums never depend on where the read began
        sum(bqx_deviations.deviation_a) over running_block_a - bqx_deviations.deviation_a as prefix_a,
        sum(bqx_deviations.deviation_b) over running_block_b - bqx_deviations.deviation_b as prefix_b,
        -- the last bar whose value differs from its predecessor's: a window after it is flat
        max(case when bqx_deviations.changed then bqx_deviations.bar_index end) over running_bars as last_change
    from bqx_deviations
    window
        running_block_a as (
            partition by bqx_deviations.pair, bqx_deviations.bar_index / {{ block }}
            order by bqx_deviations.ts_utc rows unbounded preceding
        ),
        running_block_b as (
            partition by bqx_deviations.pair, (bqx_deviations.bar_index + {{ half }}) / {{ block }}
            order by bqx_deviations.ts_utc rows unbounded preceding
        ),
        running_bars as (
            partition by bqx_deviations.pair order by bqx_deviations.ts_utc rows unbounded preceding
        )
),

bqx_window_starts as (
    -- per window: the prefix sum at the window's first bar t - W, in the grid where bars
    -- t - W .. t share a block (grid a when t - W and t are in the same block of grid a)
    select
        bqx_prefix_sums.pair,
        bqx_prefix_sums.ts_utc,
        bqx_prefix_sums.is_new,
        bqx_prefix_sums.series_value,
        bqx_prefix_sums.bar_index,
        bqx_prefix_sums.deviation_a,
        bqx_prefix_sums.deviation_b,
        bqx_prefix_sums.prefix_a,
        bqx_prefix_sums.prefix_b,
        bqx_prefix_sums.last_change
        {%- for window in var('bqx_windows') %},
        lag(
            case
                when bqx_prefix_sums.bar_index % {{ block }} + {{ window }} < {{ block }}
                    then bqx_prefix_sums.prefix_a
                else bqx_prefix_sums.prefix_b
            end,
            {{ window }}
        ) over bars_in_order as start_prefix_w{{ window }}
        {%- endfor %}
    from bqx_prefix_sums
    window bars_in_order as (partition by bqx_prefix_sums.pair order by bqx_prefix_sums.ts_utc)
),

bqx_values as (
    select
        bqx_window_starts.pair,
        bqx_window_starts.ts_utc,
        bqx_window_starts.is_new,
        bqx_window_starts.bar_index as bar_number
        {%- for window in var('bqx_windows') %},
        -- mean - y = (sum of deviations over t-W .. t-1) / W - deviation of t (same block),
        -- exactly 0 when bars t-W .. t are equal, NULL in the warm-up (no bar t - W)
        case
            when bqx_window_starts.last_change <= bqx_window_starts.bar_index - {{ window }} then 0.0
            when bqx_window_starts.bar_index % {{ block }} >= {{ window }}
                then
                    (bqx_window_starts.prefix_a - bqx_window_starts.start_prefix_w{{ window }})
                    / {{ window }}.0 - bqx_window_starts.deviation_a
            else
                (bqx_window_starts.prefix_b - bqx_window_starts.start_prefix_w{{ window }})
                / {{ window }}.0 - bqx_window_starts.deviation_b
        end / nullif(bqx_window_starts.series_value, 0) as bqx_w{{ window }}
        {%- endfor %}
    from bqx_window_starts
)
{%- endmacro %}
