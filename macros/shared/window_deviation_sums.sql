{#- Window sums of powers of deviations from the current value: shared by the statistics,
    Bollinger and spread families (documented in macros/shared/shared.yml). -#}

{#-
    CTEs `<prefix>_lags`, `<prefix>_blocks`, `<prefix>_segments`, `<prefix>_shifted` and
    `<prefix>_sums` over `rows_cte` (columns pair, ts_utc, is_new, `series` and the `carried`
    columns). `<prefix>_sums` holds pair, ts_utc, is_new, series_value (y[t]), the carried columns
    unchanged and, for each W of `windows` and
    k = 1 .. max_power, dev_sum_k_wW = Σ_{j=1}^{W-1} (y[t-j] - y[t])^k (NULL unless the W values
    y[t-W+1] .. y[t] are all non-NULL), plus window_min_wW / window_max_wW when `with_extremes`
    (meaningful only where dev_sum_1_wW is not NULL).

    Why deviations from y[t]: they are exact in float8 for nearby values (Sterbenz) and of the
    window's own scale, so the moments derived from them lose no digits to the series' level
    (raw power sums at the rate scale, y ~ 100 and sigma ~ 0.01, cancel ~8 digits). Every term
    of a window shares the same reference y[t], which a window aggregate cannot express (its
    argument is evaluated per input row).

    How, with few window operations per row: the windows W_1 < W_2 < ... cut the bars back from t
    into segments [t-W_i+1 .. t-W_(i-1)] of lengths L_i = W_i - W_(i-1) (L_1 = W_1; for the
    default windows 15, 30, ... every segment is 15 bars). Each row t first gets, from lags of the
    series, the block sums of every distinct length L over its own last L bars about its own value:
    B_q(t, L) = Σ_{j=1}^{L-1} (y[t-j] - y[t])^q (and the block's min and max). Segment i of row t is
    the block of length L_i that ends W_(i-1) bars back, read with one lag per block column; its
    sums are moved from that block's reference a = y[t-W_(i-1)] to y[t] exactly as algebra allows,
    with δ = a - y[t] and the segment's L_i values x:
        Σ (x - y[t])^k = Σ_{q=0}^{k} C(k, q) δ^(k-q) B_q,  B_0 = L_i.
    Every term is of the window's own scale (|δ| is the distance between two of the window's own
    values, and the anchor a is one of the segment's values, so the even sums are ≥ δ^k): no digits
    are lost to the level, and the result is within a few ulps of the direct sum. The window sums
    are then the sums of their segments. Cost per row: max L − 1 lags plus (number of windows − 1)
    × (max_power + 2, + 2 with extremes) lags, against max W − 1 lags summed term by term before
    (statistics: 42 lags and ~300 float8 operations instead of 74 lags and ~750).
    The fences (planner_fence) keep the planner from inlining a CTE's expressions into every
    expression (or lag) that reads them, which would recompute them per use: the families read
    each window sum several times (the shift s = Σd/W alone up to ten times in the kurtosis).
-#}
{#- The windows (sorted, distinct) cut the bars back from t into segments between consecutive
    windows: one dict per window W_i, {'window': W_i, 'back': W_(i-1), 'length': W_i − W_(i-1)}
    (W_0 = 0): segment i holds bars t−W_i+1 .. t−W_(i-1), and window W_i is segments 1 .. i. -#}
{% macro window_segments(windows) -%}
{%- set segments = [] -%}
{%- set ns = namespace(previous=0) -%}
{%- for window in windows | map('int') | unique | sort -%}
    {%- do segments.append({'window': window, 'back': ns.previous, 'length': window - ns.previous}) -%}
    {%- set ns.previous = window -%}
{%- endfor -%}
{{ return(segments) }}
{%- endmacro %}


{% macro window_deviation_sums_ctes(prefix, rows_cte, series, windows, max_power, with_extremes=false, carried=[]) -%}
{%- if max_power < 1 or max_power > 4 -%}
    {{ exceptions.raise_compiler_error("window_deviation_sums_ctes: max_power must be 1 .. 4, got " ~ max_power) }}
{%- endif -%}
{%- set segments = window_segments(windows) -%}
{%- set lengths = segments | map(attribute='length') | unique | sort | list -%}
{%- set longest_block = lengths | last -%}
{%- set binomial = {1: [1, 1], 2: [1, 2, 1], 3: [1, 3, 3, 1], 4: [1, 4, 6, 4, 1]} -%}
{{ prefix }}_lags as (
    -- y[t-j] and its deviation d_j = y[t-j] - y[t] (and d_j squared) for j = 1 .. {{ longest_block - 1 }}
    select
        lag_rows.pair,
        lag_rows.ts_utc,
        lag_rows.is_new,
        lag_rows.{{ series }} as series_value
        {%- for column in carried %},
        lag_rows.{{ column }}
        {%- endfor %}
        {%- for lag in range(1, longest_block) %},
        {%- if with_extremes %}
        lag(lag_rows.{{ series }}, {{ lag }}) over bars_in_order as lag_value_{{ lag }},
        {%- endif %}
        lag(lag_rows.{{ series }}, {{ lag }}) over bars_in_order - lag_rows.{{ series }} as deviation_{{ lag }}
        {%- if max_power >= 2 %},
        (lag(lag_rows.{{ series }}, {{ lag }}) over bars_in_order - lag_rows.{{ series }})
        * (lag(lag_rows.{{ series }}, {{ lag }}) over bars_in_order - lag_rows.{{ series }}) as deviation_sq_{{ lag }}
        {%- endif %}
        {%- endfor %}
    from {{ rows_cte }} as lag_rows
    window bars_in_order as (partition by lag_rows.pair order by lag_rows.ts_utc)
),

{{ prefix }}_blocks as (
    -- per block length L: B_q = Σ_{j=1}^{L-1} d_j^q about y[t] (and the block's min and max)
    select
        {{ prefix }}_lags.pair,
        {{ prefix }}_lags.ts_utc,
        {{ prefix }}_lags.is_new,
        {{ prefix }}_lags.series_value
        {%- for column in carried %},
        {{ prefix }}_lags.{{ column }}
        {%- endfor %}
        {%- for length in lengths %}
        {%- set lags = range(1, length) | list %}
        {%- if lags | length == 0 %},
        -- a block of one bar: no deviation; y[t] - y[t] keeps its NULL
        {{ prefix }}_lags.series_value - {{ prefix }}_lags.series_value as block_sum_1_l{{ length }}
        {%- for power in range(2, max_power + 1) %},
        0::double precision as block_sum_{{ power }}_l{{ length }}
        {%- endfor %}
        {%- else %}
        {%- for power in range(1, max_power + 1) %},
        {% for lag in lags -%}
        {%- if power == 1 -%}
        {{ prefix }}_lags.deviation_{{ lag }}
        {%- elif power == 2 -%}
        {{ prefix }}_lags.deviation_sq_{{ lag }}
        {%- elif power == 3 -%}
        {{ prefix }}_lags.deviation_sq_{{ lag }} * {{ prefix }}_lags.deviation_{{ lag }}
        {%- else -%}
        {{ prefix }}_lags.deviation_sq_{{ lag }} * {{ prefix }}_lags.deviation_sq_{{ lag }}
        {%- endif %}{{ " + " if not loop.last }}
        {%- endfor %} as block_sum_{{ power }}_l{{ length }}
        {%- endfor %}
        {%- endif %}
        {%- if with_extremes %}
        {%- set values = [prefix ~ '_lags.series_value'] %}
        {%- for lag in lags %}{% do values.append(prefix ~ '_lags.lag_value_' ~ lag) %}{% endfor %},
        least({{ values | join(', ') }}) as block_min_l{{ length }},
        greatest({{ values | join(', ') }}) as block_max_l{{ length }}
        {%- endif %}
        {%- endfor %}
        {{- planner_fence_column(prefix ~ '_lags') }}
    from {{ prefix }}_lags
    {{ planner_fence(prefix ~ '_lags') }}
),

{{ prefix }}_segments as (
    -- per segment between consecutive windows: the block of its length that ends at its last
    -- bar (W_(i-1) bars back), and δ = that bar's value - y[t]
    select
        {{ prefix }}_blocks.pair,
        {{ prefix }}_blocks.ts_utc,
        {{ prefix }}_blocks.is_new,
        {{ prefix }}_blocks.series_value
        {%- for column in carried %},
        {{ prefix }}_blocks.{{ column }}
        {%- endfor %}
        {%- for segment in segments %}
        {%- set tag = 'w' ~ segment.window %}
        {%- set block = '_l' ~ segment.length %}
        {%- if segment.back == 0 %}
        {%- for power in range(1, max_power + 1) %},
        {{ prefix }}_blocks.block_sum_{{ power }}{{ block }} as segment_sum_{{ power }}_{{ tag }}
        {%- endfor %}
        {%- if with_extremes %},
        {{ prefix }}_blocks.block_min{{ block }} as segment_min_{{ tag }},
        {{ prefix }}_blocks.block_max{{ block }} as segment_max_{{ tag }}
        {%- endif %}
        {%- else %}
        {#- the segment's last bar's value, block sums (and extremes) in one fetch: a float8[]
            lag instead of one lag each (the same call, written once per use, is computed once) #}
        {%- set fetched = [prefix ~ '_blocks.series_value'] %}
        {%- for power in range(1, max_power + 1) %}{% do fetched.append(prefix ~ '_blocks.block_sum_' ~ power ~ block) %}{% endfor %}
        {%- if with_extremes %}{% do fetched.extend([prefix ~ '_blocks.block_min' ~ block, prefix ~ '_blocks.block_max' ~ block]) %}{% endif %}
        {%- set back = '(lag(array[' ~ fetched | join(', ') ~ '], ' ~ segment.back ~ ') over bars_in_order)' %},
        {{ back }}[1] - {{ prefix }}_blocks.series_value as segment_shift_{{ tag }}
        {%- for power in range(1, max_power + 1) %},
        {{ back }}[{{ power + 1 }}] as segment_block_sum_{{ power }}_{{ tag }}
        {%- endfor %}
        {%- if with_extremes %},
        {{ back }}[{{ max_power + 2 }}] as segment_min_{{ tag }},
        {{ back }}[{{ max_power + 3 }}] as segment_max_{{ tag }}
        {%- endif %}
        {%- endif %}
        {%- endfor %}
    from {{ prefix }}_blocks
    window bars_in_order as (partition by {{ prefix }}_blocks.pair order by {{ prefix }}_blocks.ts_utc)
),

{{ prefix }}_shifted as (
    -- each segment's sums moved to the reference y[t]:
    -- Σ (x - y[t])^k = Σ_{q=0}^{k} C(k, q) δ^(k-q) B_q with B_0 = the segment's length
    select
        {{ prefix }}_segments.pair,
        {{ prefix }}_segments.ts_utc,
        {{ prefix }}_segments.is_new,
        {{ prefix }}_segments.series_value
        {%- for column in carried %},
        {{ prefix }}_segments.{{ column }}
        {%- endfor %}
        {%- for segment in segments %}
        {%- set tag = 'w' ~ segment.window %}
        {%- set shift = prefix ~ '_segments.segment_shift_' ~ tag %}
        {%- for power in range(1, max_power + 1) %},
        {% if segment.back == 0 -%}
        {{ prefix }}_segments.segment_sum_{{ power }}_{{ tag }}
        {%- else -%}
        {#- Horner's form of the sum above: B_k + δ (C(k,k-1) B_(k-1) + δ (C(k,k-2) B_(k-2) + ... + δ L)) -#}
        {%- set horner = namespace(expression=segment.length ~ '.0') %}
        {%- for q in range(1, power + 1) %}
        {%- set coefficient = binomial[power][q] %}
        {%- set block_sum = prefix ~ '_segments.segment_block_sum_' ~ q ~ '_' ~ tag %}
        {%- set scaled = (coefficient ~ '.0 * ' if coefficient != 1 else '') ~ block_sum %}
        {%- set horner.expression = scaled ~ ' + ' ~ shift ~ ' * (' ~ horner.expression ~ ')' %}
        {%- endfor %}
        {{- horner.expression }}
        {%- endif %} as segment_sum_{{ power }}_{{ tag }}
        {%- endfor %}
        {%- if with_extremes %},
        {{ prefix }}_segments.segment_min_{{ tag }},
        {{ prefix }}_segments.segment_max_{{ tag }}
        {%- endif %}
        {%- endfor %}
        {{- planner_fence_column(prefix ~ '_segments') }}
    from {{ prefix }}_segments
    {{ planner_fence(prefix ~ '_segments') }}
),

{{ prefix }}_sums as (
    -- per window: the sums of its segments
    select
        {{ prefix }}_shifted.pair,
        {{ prefix }}_shifted.ts_utc,
        {{ prefix }}_shifted.is_new,
        {{ prefix }}_shifted.series_value
        {%- for column in carried %},
        {{ prefix }}_shifted.{{ column }}
        {%- endfor %}
        {%- for segment in segments %}
        {%- set covered = segments[:loop.index] %}
        {%- for power in range(1, max_power + 1) %},
        {% for part in covered -%}
        {{ prefix }}_shifted.segment_sum_{{ power }}_w{{ part.window }}{{ " + " if not loop.last }}
        {%- endfor %} as dev_sum_{{ power }}_w{{ segment.window }}
        {%- endfor %}
        {%- if with_extremes %},
        least(
            {%- for part in covered %}{{ prefix }}_shifted.segment_min_w{{ part.window }}{{ ", " if not loop.last }}{% endfor -%}
        ) as window_min_w{{ segment.window }},
        greatest(
            {%- for part in covered %}{{ prefix }}_shifted.segment_max_w{{ part.window }}{{ ", " if not loop.last }}{% endfor -%}
        ) as window_max_w{{ segment.window }}
        {%- endif %}
        {%- endfor %}
        {{- planner_fence_column(prefix ~ '_shifted') }}
    from {{ prefix }}_shifted
    {{ planner_fence(prefix ~ '_shifted') }}
)
{%- endmacro %}
