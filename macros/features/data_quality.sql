{#-
    Data-quality signals as features (model data_quality_features): the maths lives here once;
    documented in macros/features/data_quality.yml. They feed the dataset builder's filters.

    Constants (vars, with these defaults until dbt_project.yml declares them):
      gap_limit_minutes     5    a bar more than this many minutes after its predecessor opens a gap
      spike_window          60   bars of 1-bar log returns behind the spike σ (the bar excluded)
      spike_sigma_multiple  10   |return| above this many σ is a spike
-#}

{% macro data_quality_settings() -%}
    {{ return({
        'gap_limit_minutes': var('gap_limit_minutes', 5),
        'spike_window': var('spike_window', 60) | int,
        'spike_sigma_multiple': var('spike_sigma_multiple', 10),
    }) }}
{%- endmacro %}


{#- Per gap flag, the number of bars the longest feature of its families reads (on either
    domain), from the registry (feature_families(): gap_window and window_span), in the
    registry's order: families sharing a window list share a flag (statistics, volume and spread:
    rolling), its span the longest of theirs. -#}
{% macro data_quality_gap_spans() -%}
    {%- set spans = {} -%}
    {%- for family in feature_families() if family.gap_window -%}
        {%- do spans.update({family.gap_window: [spans.get(family.gap_window, 0), family.window_span] | max}) -%}
    {%- endfor -%}
    {{ return(spans) }}
{%- endmacro %}


{#- The windows that cut the spike window (N = spike_window returns) into segments for
    window_deviation_sums_ctes: n segments of ~L bars, L the smallest with L² ≥ 3N, which makes the
    lags per row, (L − 1) + 3 (n − 1), about the fewest (N = 60: 12, 24, 36, 48, 60, 23 lags). -#}
{% macro spike_segment_windows() -%}
    {%- set window = data_quality_settings().spike_window -%}
    {%- if window < 2 -%}
        {{ exceptions.raise_compiler_error("var spike_window must be at least 2 (a sample standard deviation), got " ~ window) }}
    {%- endif -%}
    {%- set ns = namespace(length=1) -%}
    {%- for length in range(1, window + 1) if ns.length * ns.length < 3 * window -%}
        {%- set ns.length = length + 1 -%}
    {%- endfor -%}
    {%- set count = (window + ns.length - 1) // ns.length -%}
    {%- set windows = [] -%}
    {%- for segment in range(1, count + 1) -%}
        {%- do windows.append(window * segment // count) -%}
    {%- endfor -%}
    {{ return(windows) }}
{%- endmacro %}


{#- Bars read before the first new bar of an incremental run: the longest gap span and the
    spike window (which needs one more close for its first return). -#}
{% macro data_quality_lookback_bars() -%}
    {{ return([data_quality_gap_spans().values() | max, data_quality_settings().spike_window + 1] | max) }}
{%- endmacro %}


{% macro data_quality_column_names() -%}
    {{ return(data_quality_columns() | map(attribute='name') | list) }}
{%- endmacro %}


{#- The column specs (macros/catalog/feature_columns.sql) of data_quality_features; the gap flags'
    spans and what they cover come from the registry. -#}
{% macro data_quality_columns(domain=none) -%}
    {%- set settings = data_quality_settings() -%}
    {%- set spike_window = settings.spike_window -%}
    {%- set spike_score = 'spike_score_w' ~ spike_window -%}
    {%- set exact = 'exact (integers and booleans)' -%}
    {%- set columns = [
        feature_column(
            'minutes_since_prev_bar',
            'ts_utc[t] - ts_utc[t-1] in whole minutes (integer): 1 for consecutive bars, more after missing
            minutes, about 2880 after a weekend.',
            warmup=1, warmup_rule='the previous bar', precision=exact,
        ),
        feature_column(
            'unchanged_close_run',
            'Length in bars of the run of equal close_idx ending at t (bigint): 1 when the close differs from
            the previous bar\'s (or on the first bar), k when the last k closes are equal (a stale feed or a
            flat market). Unbounded: an incremental run continues the run stored in the table.',
            precision=exact,
        ),
        feature_column(
            spike_score,
            '|r[t]| / sigma, with r[k] = ln(close_idx[k] / close_idx[k-1]) and sigma the sample standard
            deviation (ddof 1) of r over the previous {n} bars t-{n} ... t-1 (var spike_window, now {n}; the
            current bar excluded so a spike cannot mask itself).',
            values={'n': spike_window},
            warmup=spike_window + 1, warmup_rule='spike_window + 1: the returns need a previous close',
            null_when='sigma = 0 (the previous {} closes are equal)'.format(spike_window + 1),
            null_allowed_when=spike_window_is_flat(
                graph_model_relation('data_quality_features', 'features'), 'data_quality_features', spike_score),
            precision='float8, within 1e-9 of NumPy (measured ~1e-16)',
        ),
        feature_column(
            'spike_flag_w' ~ spike_window,
            '|r[t]| > var spike_sigma_multiple (now {k}) x sigma, r and sigma as in {score} (boolean). A move
            right after a flat stretch (sigma = 0) is a spike.',
            values={'k': settings.spike_sigma_multiple, 'score': spike_score},
            warmup=spike_window + 1, warmup_rule='spike_window + 1', precision=exact,
        ),
    ] -%}
    {%- for gap_window, span in data_quality_gap_spans().items() -%}
        {%- set readers = [] -%}
        {%- for family in feature_families() if family.gap_window == gap_window -%}
            {%- do readers.append(family.name ~ ' ' ~ family.window_span ~ ' bars, ' ~ family.window_span_rule) -%}
        {%- endfor -%}
        {%- do columns.append(feature_column(
            'gap_in_' ~ gap_window ~ '_window',
            'TRUE when a gap lies inside the {span} bars t-{span1} ... t that the longest feature of its
            families reads on either domain ({readers}), i.e. when one of bars t-{span2} ... t opened more than
            var gap_limit_minutes (now {limit}) minutes after its predecessor. Weekends count as gaps, like
            missing stretches (boolean).',
            values={'span': span, 'span1': span - 1, 'span2': span - 2, 'readers': readers | join('; '),
                'limit': settings.gap_limit_minutes},
            warmup=span - 1, warmup_rule='the span − 1', precision=exact,
        )) -%}
    {%- endfor -%}
    {{ return(columns) }}
{%- endmacro %}


{#- A select over `source` (pair, ts_utc, close_idx, is_new) giving pair, ts_utc, is_new and
    every column of data_quality_column_names(). `built` is the model's own table on an
    incremental run (none on a full build): a run of unchanged closes can be longer than any
    lookback, so the run length of the first bar read is taken from what was built. -#}
{% macro data_quality_features_sql(source, built=none) -%}
{%- set settings = data_quality_settings() -%}
{%- set spike_window = settings.spike_window -%}
with bar_steps as (
    select
        bars.pair,
        bars.ts_utc,
        bars.is_new,
        -- whole minutes (bars open on whole minutes); NULL on the first bar read
        (extract(epoch from bars.ts_utc - lag(bars.ts_utc) over bars_in_order) / 60)::integer
            as minutes_since_prev_bar,
        ln(bars.close_idx / lag(bars.close_idx) over bars_in_order) as log_return,
        -- r[t-1], the same operations on the same closes as log_return one bar back (bit for bit)
        ln(lag(bars.close_idx, 1) over bars_in_order / lag(bars.close_idx, 2) over bars_in_order)
            as previous_return,
        coalesce(bars.close_idx <> lag(bars.close_idx) over bars_in_order, true) as close_changed,
        row_number() over bars_in_order as bar_number,
        {%- if built is not none %}
        built_rows.unchanged_close_run as built_run
        {%- else %}
        null::bigint as built_run
        {%- endif %}
    from {{ source }} as bars
    {%- if built is not none %}
    -- only the first bar read of each pair needs its built run: that bar is read_from_ts of the
    -- increment's bounds (or the pair's first bar, whose run starts there anyway), one index probe
    -- per pair; joined on every bar read, the planner hashed the whole built table (4.1 s of a
    -- one-day increment at FX-year, where the day's other work took 0.2 s)
    left join (
        select
            built_starts.pair,
            built_starts.ts_utc,
            built_starts.unchanged_close_run
        from {{ built }} as built_starts
        inner join {{ increment_bounds_relation('first_read') }}
            on built_starts.pair = first_read.pair and built_starts.ts_utc = first_read.read_from_ts
        where first_read.recompute
    ) as built_rows
        on bars.pair = built_rows.pair and bars.ts_utc = built_rows.ts_utc
    {%- endif %}
    window bars_in_order as (partition by bars.pair order by bars.ts_utc)
),

{#- The previous N returns r[t-N] .. r[t-1] are the window of N values of previous_return ending
    at t: their sums of deviations from r[t-1] (one of them, so every term is of the window's own
    scale) give the sample variance. A stddev_samp over a moving frame re-aggregated all N returns
    for every row (float8 aggregates have no inverse transition): two thirds of the model's time. #}
{{ window_deviation_sums_ctes(
    'spike', 'bar_steps', 'previous_return', spike_segment_windows(), 2,
    carried=['minutes_since_prev_bar', 'log_return', 'close_changed', 'bar_number', 'built_run'],
) }},

bar_histories as (
    select
        spike_sums.pair,
        spike_sums.ts_utc,
        spike_sums.is_new,
        spike_sums.minutes_since_prev_bar,
        spike_sums.log_return,
        spike_sums.bar_number,
        -- the bar that started the current run of equal closes
        max(case when spike_sums.close_changed then spike_sums.bar_number end) over running as run_start_bar,
        -- the last bar that opened a gap: a running max, O(1) per row whatever the span
        max(
            case when spike_sums.minutes_since_prev_bar > {{ settings.gap_limit_minutes }} then spike_sums.bar_number end
        ) over running as last_gap_bar,
        first_value(spike_sums.built_run) over running as first_built_run,
        -- NULL unless the N previous returns all exist; s = mean - r[t-1], the variance about the
        -- mean Σd²/N - s² clamped at 0 against rounding (greatest() skips NULL: hence the case),
        -- times N / (N - 1) for ddof 1
        case
            when spike_sums.dev_sum_1_w{{ spike_window }} is not null
                then sqrt(
                    greatest(
                        spike_sums.dev_sum_2_w{{ spike_window }} / {{ spike_window }}.0
                        - (spike_sums.dev_sum_1_w{{ spike_window }} / {{ spike_window }}.0)
                        * (spike_sums.dev_sum_1_w{{ spike_window }} / {{ spike_window }}.0),
                        0
                    ) * {{ spike_window }}.0 / {{ spike_window - 1 }}.0
                )
        end as previous_return_std
    from spike_sums
    window
        running as (
            partition by spike_sums.pair order by spike_sums.ts_utc
            rows between unbounded preceding and current row
        )
)

select
    bar_histories.pair,
    bar_histories.ts_utc,
    bar_histories.is_new,
    bar_histories.minutes_since_prev_bar,
    (
        bar_histories.bar_number - bar_histories.run_start_bar + 1
        -- the run that began before the first bar read continues the run already built there
        + case when bar_histories.run_start_bar = 1 then coalesce(bar_histories.first_built_run, 1) - 1 else 0 end
    )::bigint as unchanged_close_run,
    abs(bar_histories.log_return) / nullif(bar_histories.previous_return_std, 0) as spike_score_w{{ spike_window }},
    abs(bar_histories.log_return)
    > {{ settings.spike_sigma_multiple }} * bar_histories.previous_return_std as spike_flag_w{{ spike_window }},
    {%- for family, span in data_quality_gap_spans().items() %}
    -- a gap opened by one of the bars t-{{ span - 2 }} ... t lies inside the {{ span }} bars read
    case
        when bar_histories.bar_number >= {{ span }}
            then coalesce(bar_histories.last_gap_bar >= bar_histories.bar_number - {{ span - 2 }}, false)
    end as gap_in_{{ family }}_window{{ "," if not loop.last }}
    {%- endfor %}
from bar_histories
{%- endmacro %}


{#- For the warm-up test of spike_score (null_allowed_when of data_quality_columns()): the score of
    the tested row of `model` is NULL and the spike window's returns are all 0, i.e. the previous bar ends a
    run of at least spike_window + 1 equal closes. The subquery runs only on NULL rows. -#}
{% macro spike_window_is_flat(model, model_name, column) -%}
case
    when {{ model_name }}.{{ column }} is null
        then (
            select previous_bar.unchanged_close_run
            from {{ model }} as previous_bar
            where previous_bar.pair = {{ model_name }}.pair and previous_bar.ts_utc < {{ model_name }}.ts_utc
            order by previous_bar.ts_utc desc
            limit 1
        ) >= {{ data_quality_settings().spike_window + 1 }}
    else false
end
{%- endmacro %}
