{#-
    Volume features (model volume_features): the maths lives here once; documented in
    macros/features/volume.yml.

    Windows count bars of one pair ordered by ts_utc and end at bar t (t included).
-#}

{#- Days of same-minute history behind volume_tod_ratio_d<N> (add the var to dbt_project.yml). -#}
{% macro volume_tod_days() -%}
    {{ return(var('volume_tod_days', 5) | int) }}
{%- endmacro %}


{#- Bars read before the first new bar of an incremental run: the longest window of the model
    (the time-of-day ratio looks back volume_tod_days × 1440 bars; the imbalance W + 1 bars). -#}
{% macro volume_lookback_bars() -%}
    {{ return([var('rolling_windows') | max + 1, volume_tod_days() * 1440] | max) }}
{%- endmacro %}


{% macro volume_column_names() -%}
    {{ return(volume_columns() | map(attribute='name') | list) }}
{%- endmacro %}


{#- The column specs (macros/catalog/feature_columns.sql) of volume_features: six metrics per
    window of var('rolling_windows'), then the time-of-day ratio. -#}
{% macro volume_columns(domain=none) -%}
    {%- set silent = 'the window\'s volume is all 0' -%}
    {%- set metrics = [
        {'name': 'volume_mean_w{w}', 'template': 'Mean tick volume of the {w} bars t-{w1} ... t (window {w}
            bars, var rolling_windows): the exact integer sum / {w} (float8).',
            'null_when': silent, 'null_allowed_when': '{silent_sql}'},
        {'name': 'volume_std_w{w}', 'template': 'Sample standard deviation (ddof 1) of the volumes of bars
            t-{w1} ... t: sqrt((W sum(v^2) - sum(v)^2) / (W (W - 1))), the numerator an exact integer; 0 for a
            constant volume.',
            'null_when': silent, 'null_allowed_when': 'volume_mean_w{w} is null'},
        {'name': 'volume_z_w{w}', 'template': '(volume[t] - volume_mean_w{w}) / volume_std_w{w}.',
            'null_when': silent ~ ' or constant (std 0)',
            'null_allowed_when': 'volume_mean_w{w} is null or volume_std_w{w} = 0'},
        {'name': 'volume_ratio_w{w}', 'template': 'volume[t] / volume_mean_w{w}: relative volume (1 = an
            average bar of the window).',
            'null_when': silent, 'null_allowed_when': 'volume_mean_w{w} is null'},
        {'name': 'volume_imbalance_w{w}', 'template': 'OBV-like signed-volume balance over bars
            k = t-{w1} ... t: sum(sign(close_idx[k] - close_idx[k-1]) * volume[k]) / sum(volume[k]), in
            [-1, 1] (1: all the volume on rising closes; an unchanged close counts 0), from exact integer
            sums. Reads {w_plus_1} closes.', 'warmup_offset': 0,
            'null_when': silent, 'null_allowed_when': 'volume_mean_w{w} is null'},
        {'name': 'volume_vwap_dev_w{w}', 'template': 'close_idx[t] / vwap - 1, vwap = sum(typical * volume) /
            sum(volume) over bars t-{w1} ... t, typical = (high_idx + low_idx + close_idx) / 3 (the price x
            volume sum in float8, added segment by segment in a fixed order): the relative distance of the price from its volume-weighted mean.',
            'null_when': silent, 'null_allowed_when': 'volume_mean_w{w} is null'},
    ] -%}
    {%- set precision = 'float8 from exact integer window sums (and float8 price x volume sums), within 1e-9 of
        NumPy on each window (measured ≤ 6e-13 of the column\'s largest |value|)' -%}
    {%- set columns = [] -%}
    {%- for window in var('rolling_windows') | map('int') -%}
        {%- do columns.extend(windowed_columns(
            metrics, [window], feature_series(none), precision,
            values={
                'w_plus_1': window + 1,
                'silent_sql': volume_window_is_silent('volume_features', 'volume_mean_w' ~ window, window),
            },
        )) -%}
    {%- endfor -%}
    {%- set days = volume_tod_days() -%}
    {%- set tod_column = 'volume_tod_ratio_d' ~ days -%}
    {%- do columns.append(feature_column(
        tod_column,
        'volume[t] / mean volume of the bars at the same UTC minute of day among the previous {days} x 1440
        = {bars} bars t-{bars} ... t-1 (var volume_tod_days, default 5: about a trading week of bars; bars,
        not clock days): the bar\'s volume relative to its usual level at that time of day, free of the
        intraday seasonality. Causal (the current bar is not in the mean).',
        values={'days': days, 'bars': days * 1440},
        warmup=days * 1440,
        warmup_rule='volume_tod_days × 1440',
        null_when='none of those bars has volume (no bar at that minute, or all 0)',
        null_allowed_when=volume_tod_is_silent('volume_features', tod_column),
        precision='float8, within 1e-9 of NumPy',
    )) -%}
    {{ return(columns) }}
{%- endmacro %}


{#- A select over `source` (pair, ts_utc, high_idx, low_idx, close_idx, volume, is_new) giving
    pair, ts_utc, is_new and every column of volume_column_names().

    The integer window sums are total[t] − total[t−W] of running totals over the pair's bars read
    (one running-sum pass and one lag pass for all windows: O(1) per row; frame aggregates cost
    one WindowAgg pass per window and, for bigint sums, a numeric result per row and window):
    float8 sums of integers, exact while the running totals stay below 2^53, and differences of
    exact totals do not depend on where the read started. The price × volume sums are not
    integers: each window's is the float8 sum of its segments (window_segments: the bars between
    consecutive windows), each segment's sum (a sum of lags over its own bars) read by one lag, so
    a window's sum depends on its own bars only, added in a fixed order. Bar t-W's totals and the
    segment starting there travel in one float8[] lag per window, and a window's count of bars is
    the bar number read (volume and close_idx are never NULL): 5 lags for the windows where 29
    were (two counts per window among them), 28.4-28.6 s against 32.4-33.0 s on 28 pairs x 3
    months (EXPLAIN ANALYZE, alternating; -8% in whole builds, against the unchanged models),
    every value bit for bit the same. Either way an incremental
    run equals a full build bit for bit. (A numeric running total did the same exactly, but its
    float8 ↔ numeric conversions go through text: 23% of the model, measured.) -#}
{% macro volume_features_sql(source) -%}
{%- set tod_bars = volume_tod_days() * 1440 -%}
{%- set segments = window_segments(var('rolling_windows')) -%}
{%- set lengths = segments | map(attribute='length') | unique | sort | list -%}
with priced_bars as (
    -- typical·volume once per bar: the block sums below read it through 14 lags per row, and
    -- PostgreSQL evaluates an expression under lag() again at every call (fenced, or the planner
    -- writes the expression back into each lag): the model's select on two pair-years 6.74 and
    -- 6.37 s -> 5.93 and 5.94 s (two series of three alternating runs, medians), the same values
    -- bit for bit
    select
        bars.pair,
        bars.ts_utc,
        bars.is_new,
        bars.close_idx,
        bars.volume,
        (bars.high_idx + bars.low_idx + bars.close_idx) / 3 * bars.volume as price_volume
        {{- planner_fence_column('bars') }}
    from {{ source }} as bars
    {{ planner_fence('bars') }}
),

volume_steps as (
    select
        bars.pair,
        bars.ts_utc,
        bars.is_new,
        bars.close_idx,
        bars.volume,
        bars.volume * bars.volume as volume_squared,
        {%- for length in lengths %}
        -- Σ typical·volume over the {{ length }} bars ending at this one (a segment's sum; a
        -- moving frame, which re-aggregates float8 row by row, measured the same: 48.0 against
        -- 47.0 s, medians of 5 on 28 pairs × 3 months)
        {%- for back in range(length) %}
        {% if back == 0 %}bars.price_volume{% else %}lag(bars.price_volume, {{ back }}) over bars_in_order{% endif %}
        {{- ' +' if not loop.last else ' as price_volume_block_l' ~ length ~ ',' }}
        {%- endfor %}
        {%- endfor %}
        -- the bar's volume signed by the direction of its close (0 when unchanged); NULL on
        -- a pair's first bar, which has no previous close
        case
            when lag(bars.close_idx) over bars_in_order is null then null
            when bars.close_idx > lag(bars.close_idx) over bars_in_order then bars.volume
            when bars.close_idx < lag(bars.close_idx) over bars_in_order then -bars.volume
            else 0::bigint
        end as signed_volume,
        (
            date_part('hour', bars.ts_utc at time zone 'UTC') * 60
            + date_part('minute', bars.ts_utc at time zone 'UTC')
        )::integer as minute_of_day,
        row_number() over bars_in_order as bar_number
    from priced_bars as bars
    window bars_in_order as (partition by bars.pair order by bars.ts_utc)
),

volume_running as (
    -- running totals over the pair's bars read so far: O(1) per row (no frame to re-aggregate).
    -- float8 sums of integers are exact while they stay below 2^53 (9e15); a window's total is
    -- the difference of two of them, exact too, and independent of where the read started.
    -- Σ typical·volume is not an integer: its block sums come from volume_steps.
    select
        volume_steps.pair,
        volume_steps.ts_utc,
        volume_steps.is_new,
        volume_steps.close_idx,
        volume_steps.volume,
        volume_steps.bar_number,
        volume_steps.minute_of_day,
        sum(volume_steps.volume::double precision) over running_bars as volume_total,
        sum(volume_steps.volume_squared::double precision) over running_bars as volume_squared_total,
        sum(volume_steps.signed_volume::double precision) over running_bars as signed_total
        {%- for length in lengths %},
        volume_steps.price_volume_block_l{{ length }}
        {%- endfor %}
    from volume_steps
    window running_bars as (
        partition by volume_steps.pair order by volume_steps.ts_utc rows unbounded preceding
    )
),

volume_windows as (
    select
        volume_running.pair,
        volume_running.ts_utc,
        volume_running.is_new,
        volume_running.close_idx,
        volume_running.volume::double precision as volume,
        volume_running.bar_number,
        {#- bar t-W's running totals, and the block of the segment that starts W bars back (if
            any), in one fetch: a float8[] lag instead of three or four lags (the same call,
            written once per use, is computed once per row) #}
        {%- set back = {} %}
        {%- for w in var('rolling_windows') | map('int') %}
        {%- set starting = segments | selectattr('back', 'equalto', w) | list %}
        {%- set block = ', volume_running.price_volume_block_l' ~ starting[0].length if starting else '' %}
        {%- do back.update({w: '(lag(array[volume_running.volume_total, volume_running.signed_total, volume_running.volume_squared_total' ~ block ~ '], ' ~ w ~ ') over bars_in_order)'}) %}
        {%- endfor %}
        {%- for w in var('rolling_windows') | map('int') %}
        -- Σ over bars t-W+1 .. t = total[t] − total[t−W] (0 before the first bar read: a
        -- window of fewer than W bars read is warm-up, told by bar_number below)
        volume_running.volume_total - coalesce({{ back[w] }}[1], 0) as volume_sum_w{{ w }},
        volume_running.signed_total - coalesce({{ back[w] }}[2], 0) as signed_sum_w{{ w }},
        volume_running.volume_squared_total - coalesce({{ back[w] }}[3], 0) as volume_squared_sum_w{{ w }},
        {%- endfor %}
        {%- for segment in segments %}
        -- Σ typical·volume over bars t-{{ segment.window - 1 }} .. t: its segments, nearest first
        {%- for part in segments if part.window <= segment.window %}
        {% if part.back == 0 %}volume_running.price_volume_block_l{{ part.length }}{% else %}{{ back[part.back] }}[4]{% endif %}
        {{- ' +' if not loop.last else ' as price_volume_sum_w' ~ segment.window ~ ',' }}
        {%- endfor %}
        {%- endfor %}
        -- the same UTC minute of day among the previous {{ tod_bars }} bars (bar_number is
        -- the bar's position in the pair, so the range counts bars, not days)
        avg(volume_running.volume) over (
            partition by volume_running.pair, volume_running.minute_of_day
            order by volume_running.bar_number
            range between {{ tod_bars }} preceding and 1 preceding
        )::double precision as tod_volume_mean
    from volume_running
    window bars_in_order as (partition by volume_running.pair order by volume_running.ts_utc)
),

volume_spreads as (
    -- W · Σv² − (Σv)² (W (W − 1) × the sample variance): exact integers in float8 while Σv
    -- stays below 2^26 per window, so 0 exactly for a constant volume, never negative
    select
        volume_windows.pair,
        volume_windows.ts_utc,
        volume_windows.is_new,
        volume_windows.close_idx,
        volume_windows.volume,
        volume_windows.bar_number,
        volume_windows.tod_volume_mean
        {%- for w in var('rolling_windows') %},
        volume_windows.volume_sum_w{{ w }},
        volume_windows.signed_sum_w{{ w }},
        volume_windows.price_volume_sum_w{{ w }},
        greatest(
            {{ w }} * volume_windows.volume_squared_sum_w{{ w }}
            - volume_windows.volume_sum_w{{ w }} * volume_windows.volume_sum_w{{ w }},
            0
        ) as volume_spread_w{{ w }}
        {%- endfor %}
    from volume_windows
)

select
    volume_spreads.pair,
    volume_spreads.ts_utc,
    volume_spreads.is_new,
    {%- for w in var('rolling_windows') %}
    {#- full window (W bars read; volume and close_idx are never NULL, so the bar number read
        says how many the window holds, where a count of each window's volumes cost two lags per
        window) with some volume in it; all-zero windows carry no information #}
    {%- set has_volume = 'volume_spreads.bar_number >= ' ~ w
        ~ ' and volume_spreads.volume_sum_w' ~ w ~ ' > 0' %}
    {%- set total = 'volume_spreads.volume_sum_w' ~ w %}
    {%- set std = 'sqrt(volume_spreads.volume_spread_w' ~ w ~ ' / ' ~ w * (w - 1) ~ ')' %}
    case when {{ has_volume }} then {{ total }} / {{ w }} end as volume_mean_w{{ w }},
    case when {{ has_volume }} then {{ std }} end as volume_std_w{{ w }},
    case
        -- (v − Σv/W) / std = (W·v − Σv) / (W · std): W·v − Σv is exact
        when {{ has_volume }} and volume_spreads.volume_spread_w{{ w }} > 0
            then ({{ w }} * volume_spreads.volume - {{ total }}) / ({{ w }} * {{ std }})
    end as volume_z_w{{ w }},
    case when {{ has_volume }} then {{ w }} * volume_spreads.volume / {{ total }} end as volume_ratio_w{{ w }},
    case
        -- W signed volumes: the first bar read has no previous close
        when volume_spreads.bar_number > {{ w }} and {{ has_volume }}
            then volume_spreads.signed_sum_w{{ w }} / {{ total }}
    end as volume_imbalance_w{{ w }},
    case
        when {{ has_volume }}
            then volume_spreads.close_idx * {{ total }} / volume_spreads.price_volume_sum_w{{ w }} - 1
    end as volume_vwap_dev_w{{ w }},
    {%- endfor %}
    case
        when volume_spreads.bar_number > {{ tod_bars }}
            then volume_spreads.volume / nullif(volume_spreads.tod_volume_mean, 0)
    end as volume_tod_ratio_d{{ volume_tod_days() }}
from volume_spreads
{%- endmacro %}


{#- For the NULL rules below: the tested row's pair has no bar with volume in m1_index at all
    (HistData's files, whose volume is always 0), so every window of it is silent. Uncorrelated,
    so PostgreSQL runs it at most once per query (a hashed subplan), and only when a NULL row
    asks: per pair, the first bar with volume in time order (`limit 1` on volume_bars_index's
    partial index: one probe per pair, with volume or without; before that index exists, on the
    unique index, which reads every bar of a pair without volume, per rule and query). Without it
    every NULL row read its windows' bars: ~80 µs per row for the five means and ~20 µs for the
    time-of-day lookups, on every row of a pair without volume (21.3 s against 1.0 s for the
    warm-up test of 4 pairs x 2 months of HistData-like bars; ~15 minutes at FX-year).
    On Citus it is `false` (the rows' own window reads decide, as before): the warm-up test pushes
    its whole select down to the shards, where an uncorrelated subquery over a distributed table
    cannot run ("complex joins are only supported when all distributed tables are co-located",
    measured with `make test-citus`), and a correlated one would read a silent pair per row.
    var('null_rules_on_shards') asks for that form where no connection can tell: the dataset
    builder's validation on a Citus source (bqx.datasets.validate.NULL_RULES_ON_SHARDS_VAR). -#}
{% macro volume_pair_is_silent(model_name) -%}
{%- set index = market_index_relation() -%}
{%- if distributed() or var('null_rules_on_shards', false) -%}
false
{%- else -%}
{{ model_name }}.pair in (
    select silent_pairs.pair
    from {{ graph_model_relation('baseline_rates', 'staging') }} as silent_pairs
    left join lateral (
        select volume_bars.ts_utc
        from {{ index }} as volume_bars
        where volume_bars.pair = silent_pairs.pair and volume_bars.volume <> 0
        order by volume_bars.ts_utc
        limit 1
    ) as first_volume on true
    where first_volume.ts_utc is null
)
{%- endif -%}
{%- endmacro %}


{#- m1_index's bars with volume, indexed: a partial index on (pair, ts_utc) where volume <> 0,
    created by m1_index's post-hook (dbt-postgres's `indexes` config has no WHERE), once per table
    (a full refresh makes a new one). It answers the volume NULL rules' two questions in a probe
    each: whether a pair has any bar with volume (volume_pair_is_silent, whose `limit 1` probe
    otherwise reads every bar of a pair without volume, per rule and query) and whether one of
    the W bars up to a row has (volume_bars_in_window, otherwise W bars read per NULL row). A
    pair without volume adds nothing to it; for bars with volume it costs what m1_index's other
    indexes cost to build (measured in README, "Bars without volume or spread"). Rows are only
    ever read through it where the planner finds it cheaper; without it (a database built before
    it, until m1_index's next run) the rules give the same verdicts, slower. -#}
{% macro volume_bars_index(relation=this) -%}
do $volume_bars_index$
begin
    if not exists (
        select 1
        from pg_catalog.pg_index as indexes
        where
            indexes.indrelid = '{{ relation }}'::regclass
            and pg_catalog.pg_get_expr(indexes.indpred, indexes.indrelid) = '(volume <> 0)'
    ) then
        -- unnamed: during a full refresh the table being replaced still holds its own
        create index on {{ relation }} (pair, ts_utc) where volume <> 0;
    end if;
end
$volume_bars_index$
{%- endmacro %}


{#- For the NULL rules below: whether one of the `w` bars of m1_index ending at the tested row of
    `model_name` (its own bar included) has volume. The first of those bars is found by position
    (bar_number is dense per pair), then one range probe over the bars with volume between it and
    the row (volume_bars_index: a probe, where reading the window's bars cost ~80 µs per row; the
    range bounds the read to the window's bars either way). -#}
{% macro volume_bars_in_window(model_name, w) -%}
exists (
    select 1
    from {{ market_index_relation() }} as volume_bars
    where
        volume_bars.pair = {{ model_name }}.pair
        and volume_bars.volume <> 0
        and volume_bars.ts_utc <= {{ model_name }}.ts_utc
        and volume_bars.ts_utc >= {{ bar_before_ts(model_name, w - 1) }}
)
{%- endmacro %}


{#- The ts_utc of the bar of m1_index `bars` positions before the tested row of `model_name` (the
    pair's first bar when it has fewer before it; NULL if the row is not a bar): two probes of
    m1_index's unique indexes, the row's bar_number by (pair, ts_utc), then that bar by (pair,
    bar_number) (dense per pair). Where the volume rules' windows start. -#}
{% macro bar_before_ts(model_name, bars) -%}
{%- set index = market_index_relation() -%}
(
    select first_bar.ts_utc
    from {{ index }} as first_bar
    where
        first_bar.pair = {{ model_name }}.pair
        and first_bar.bar_number = greatest((
            select tested_bar.bar_number
            from {{ index }} as tested_bar
            where tested_bar.pair = {{ model_name }}.pair and tested_bar.ts_utc = {{ model_name }}.ts_utc
        ) - {{ bars }}, 0)
)
{%- endmacro %}


{#- For the warm-up test (null_allowed_when of volume_columns()): `column` of the tested row of
    `model_name` is NULL and the W bars of m1_index ending at that row have no volume: at once
    when its pair has none at all (volume_pair_is_silent), else by a probe of those bars
    (volume_bars_in_window). The subqueries run only on NULL rows. (A shorter window's rule cannot
    lean on the longest window's NULL, as spread_window_has_null leans on a shorter one's: during
    the longest window's warm-up that NULL says nothing, and a rule sees no bar position.) -#}
{% macro volume_window_is_silent(model_name, column, w) -%}
case
    when {{ model_name }}.{{ column }} is null
        then {{ volume_pair_is_silent(model_name) }}
            or not {{ volume_bars_in_window(model_name, w) }}
    else false
end
{%- endmacro %}


{#- Days of same-minute bars probed one by one by volume_tod_is_silent (var volume_tod_probe_days;
    default twice volume_tod_days plus four: a weekend, holidays and missing minutes stretch
    volume_tod_days × 1440 bars over more calendar days); a window reaching further back is
    scanned bar by bar. It changes the rule's cost, never its verdict. -#}
{% macro volume_tod_probe_days() -%}
    {%- set days = var('volume_tod_probe_days', none) -%}
    {%- if days is none -%}
        {{ return(2 * volume_tod_days() + 4) }}
    {%- elif days | int < 1 or days | string != days | int | string -%}
        {{ exceptions.raise_compiler_error(
            "var volume_tod_probe_days must be a whole number of days >= 1 (or null for the default), got " ~ days) }}
    {%- endif -%}
    {{ return(days | int) }}
{%- endmacro %}


{#- Likewise for volume_tod_ratio: no bar with volume at the tested row's UTC minute of day
    among the previous volume_tod_days × 1440 bars of m1_index (bars t-N·1440 ... t-1).

    Those bars lie whole days before t (bars open on whole minutes), so when the window's first
    bar is at most volume_tod_probe_days() days before t, the rule looks up the bars at t − k × 24
    hours for each k (one probe of m1_index's unique index on (pair, ts_utc) per day, `= any` of
    an array: no set-returning function, which Citus refuses in a correlated subquery) and keeps
    those inside the window by bar_number. Scanning the window's 7,200 bars instead cost ~1 ms per
    tested row (59 s per pair-2-months of bars without volume, such as HistData's files; a
    2.5-hour warm-up test at FX-year); the probes cost a few index lookups. A window that spans
    more days (a sparse pair) is scanned as before, so the rule is exact either way. Intervals in
    hours: they are exact lengths of time in any session time zone (a '1 day' would follow its
    daylight-saving shifts). A pair without any volume is told at once (volume_pair_is_silent).
    The subqueries run only on NULL rows. -#}
{% macro volume_tod_is_silent(model_name, column) -%}
{%- set bars = volume_tod_days() * 1440 -%}
{%- set days = volume_tod_probe_days() -%}
{%- set index = market_index_relation() -%}
case
    when {{ model_name }}.{{ column }} is null
        then {{ volume_pair_is_silent(model_name) }} or case
            when {{ bar_before_ts(model_name, bars) }} >= {{ model_name }}.ts_utc - interval '{{ days * 24 }} hours'
                then not exists (
                    select 1
                    from {{ index }} as tested_bar
                    inner join {{ index }} as same_minute_bars
                        on
                            tested_bar.pair = same_minute_bars.pair
                            and same_minute_bars.ts_utc = any(array[
                                {%- for day in range(1, days + 1) %}
                                {{ model_name }}.ts_utc - interval '{{ day * 24 }} hours'{{ ',' if not loop.last }}
                                {%- endfor %}
                            ])
                    where
                        tested_bar.pair = {{ model_name }}.pair
                        and tested_bar.ts_utc = {{ model_name }}.ts_utc
                        and same_minute_bars.bar_number >= tested_bar.bar_number - {{ bars }}
                        and same_minute_bars.volume <> 0
                )
            else not {{ last_bars_exist(
                model_name, bars, ['ts_utc', 'volume'],
                'last_bars.volume <> 0
                /* bars open on whole minutes: the same minute of day is a whole number of days apart
                   (a block comment: the catalog joins the lines of a rule into one, which a line comment would cut short) */
                and mod(extract(epoch from ' ~ model_name ~ '.ts_utc - last_bars.ts_utc)::bigint, 86400) = 0',
                include_row=false,
            ) }}
        end
    else false
end
{%- endmacro %}
