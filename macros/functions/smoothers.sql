{#-
    The recursive smoothers of the technical indicators (TA-Lib's RSI, MACD, +DI/-DI/ADX) as
    ONE PL/pgSQL aggregate in the schema `bqx_functions`, used as a WINDOW function over the
    running frame `(partition by pair order by ts_utc)`: PostgreSQL advances one transition
    state per row (O(1) per row), never re-aggregating the frame.

    Why one aggregate for all smoothers: a PL/pgSQL transition call with an array state costs
    ~0.7 µs before doing any arithmetic (argument expansion, result copy), so one aggregate per
    smoother (or per indicator: 4 calls per row) spent most of the build in call overhead.
    The aggregate is generated from the vars (periods become constants of its body), and its
    name carries them, e.g. bqx_functions.ta_smoothers_rsi14_21_macd12_26_9_dmi14(high, low,
    close): builds with other periods get their own aggregate, never a stale one.

    It replays TA-Lib's C code (the `ta-lib` wheel, TA-Lib 0.8.1) step by step in float8,
    with its seeds and warm-up; see macros/features/technical.yml. It returns a float8[]:
      {macd, macd_signal, macd_hist, +DI, -DI, ADX, RSI per var('rsi_periods'), ...state}
    with NULL outputs exactly where TA-Lib returns NaN. NULL inputs are skipped (strict
    transition function): a series that starts NULL (the bqx series' warm-up) starts every
    smoother on its first non-NULL value, as TA-Lib on the non-NULL part.

    Totality: a smoothed sum or average whose magnitude is below 1e-300 (reached only after
    ~9,000 identical bars) is read as 0, because PostgreSQL raises on a float8 underflow where
    C keeps a denormal; TA-Lib's outputs there are denormal artefacts (RSI 50, +DI 100) and
    ours its flat-market values (0).
-#}
{% macro create_smoothing_aggregates() -%}
create schema if not exists bqx_functions;
{{ technical_smoothers_ddl() }}
{%- endmacro %}


{#- The periods of the technical smoothers, from the vars (TA-Lib swaps a slow MACD period
    shorter than the fast one). -#}
{% macro technical_smoother_periods() -%}
    {%- set fast = [var('macd_fast'), var('macd_slow')] | min -%}
    {%- set slow = [var('macd_fast'), var('macd_slow')] | max -%}
    {{ return({
        'rsi': var('rsi_periods'), 'fast': fast, 'slow': slow, 'signal': var('macd_signal'),
        'dmi': var('adx_period'),
    }) }}
{%- endmacro %}


{#- Schema-qualified name of the aggregate for the current vars. -#}
{% macro technical_smoothers_name() -%}
    {%- set p = technical_smoother_periods() -%}
    bqx_functions.ta_smoothers_rsi{{ p.rsi | join('_') }}_macd{{ p.fast }}_{{ p.slow }}_{{ p.signal }}_dmi{{ p.dmi }}
{%- endmacro %}


{#- Position (1-based) of each output in the aggregate's result. -#}
{% macro technical_smoother_positions() -%}
    {%- set positions = {
        'macd': 1, 'macd_signal': 2, 'macd_hist': 3, 'plus_di': 4, 'minus_di': 5, 'adx': 6,
    } -%}
    {%- for period in var('rsi_periods') -%}
        {%- do positions.update({'rsi_' ~ period: 6 + loop.index}) -%}
    {%- endfor -%}
    {{ return(positions) }}
{%- endmacro %}


{% macro technical_smoothers_ddl() -%}
    {%- set p = technical_smoother_periods() -%}
    {%- set name = technical_smoothers_name() -%}
    {%- set a = p.dmi -%}
    {#- state layout after the outputs: base + 1 bar index (bars seen before this one),
        + 2..4 previous high, low, close, + 5..7 slow, fast, signal EMA (sums while seeding),
        + 8..10 TR, +DM, -DM Wilder sums, + 11 ADX (DX sum while seeding), then per RSI period
        its average gain and average loss (sums while seeding). -#}
    {%- set base = 6 + p.rsi | length -%}
create or replace function {{ name }}_step(
    state double precision[], new_high double precision, new_low double precision, new_close double precision
) returns double precision[]
language plpgsql immutable strict parallel safe as $body$
declare
    bar_index integer;
    change double precision;
    up_move double precision;
    down_move double precision;
    true_range double precision;
    slow_ema double precision;
    fast_ema double precision;
    macd_line double precision;
    signal_ema double precision := 0;
    tr_sum double precision;
    plus_dm double precision;
    minus_dm double precision;
    plus_di double precision := 0;
    minus_di double precision := 0;
    dx double precision;
    adx double precision;
    {%- for period in p.rsi %}
    gain_{{ period }} double precision;
    loss_{{ period }} double precision;
    {%- endfor %}
begin
    if cardinality(state) = 0 then
        return array[
            {% for _ in range(base) %}null, {% endfor %}1, new_high, new_low, new_close,
            -- bar 0 opens the slow EMA's seed sum (and the fast one's when the periods are equal)
            new_close, {{ 'new_close' if p.slow == p.fast else 0 }}, 0, 0, 0, 0, 0
            {%- for _ in p.rsi %}, 0, 0{% endfor %}
        ]::double precision[];
    end if;
    bar_index := state[{{ base + 1 }}];
    {%- set steady = [p.slow + p.signal - 1, 2 * a, (p.rsi | max) + 1] | max %}
    if bar_index >= {{ steady }} then
        -- Every smoother is past its seed ({{ steady }} bars): the same steps as below, in as few
        -- PL/pgSQL statements as possible (each costs ~0.1 µs; the expressions run as C).
        change := new_close - state[{{ base + 4 }}];
        up_move := new_high - state[{{ base + 2 }}];
        down_move := state[{{ base + 3 }}] - new_low;
        tr_sum := case when state[{{ base + 8 }}] < 1e-300 then 0
            else state[{{ base + 8 }}] - state[{{ base + 8 }}] / {{ a }} end
            + greatest(new_high - new_low, abs(new_high - state[{{ base + 4 }}]), abs(new_low - state[{{ base + 4 }}]));
        plus_dm := case when state[{{ base + 9 }}] < 1e-300 then 0
            else state[{{ base + 9 }}] - state[{{ base + 9 }}] / {{ a }} end
            + case when up_move > 0 and up_move > down_move then up_move else 0 end;
        minus_dm := case when state[{{ base + 10 }}] < 1e-300 then 0
            else state[{{ base + 10 }}] - state[{{ base + 10 }}] / {{ a }} end
            + case when down_move > 0 and down_move > up_move then down_move else 0 end;
        slow_ema := (new_close - state[{{ base + 5 }}]) * (2.0::double precision / {{ p.slow + 1 }})
            + case when abs(state[{{ base + 5 }}]) < 1e-300 then 0 else state[{{ base + 5 }}] end;
        fast_ema := (new_close - state[{{ base + 6 }}]) * (2.0::double precision / {{ p.fast + 1 }})
            + case when abs(state[{{ base + 6 }}]) < 1e-300 then 0 else state[{{ base + 6 }}] end;
        signal_ema := (fast_ema - slow_ema - state[{{ base + 7 }}]) * (2.0::double precision / {{ p.signal + 1 }})
            + case when abs(state[{{ base + 7 }}]) < 1e-300 then 0 else state[{{ base + 7 }}] end;
        plus_di := case when tr_sum > 0 then 100 * (plus_dm / tr_sum) else 0 end;
        minus_di := case when tr_sum > 0 then 100 * (minus_dm / tr_sum) else 0 end;
        adx := case
            when tr_sum > 0 and minus_di + plus_di >= 1e-14 then (
                case when state[{{ base + 11 }}] < 1e-300 then 0 else state[{{ base + 11 }}] end * {{ a - 1 }}
                + 100 * (abs(minus_di - plus_di) / (minus_di + plus_di))
            ) / {{ a }}
            else state[{{ base + 11 }}]
        end;
        {%- for period in p.rsi %}
        {%- set g = base + 11 + 2 * loop.index - 1 %}
        gain_{{ period }} := (
            case when state[{{ g }}] < 1e-300 then 0 else state[{{ g }}] end * {{ period - 1 }} + greatest(change, 0)
        ) / {{ period }};
        loss_{{ period }} := (
            case when state[{{ g + 1 }}] < 1e-300 then 0 else state[{{ g + 1 }}] end * {{ period - 1 }}
            + greatest(-change, 0)
        ) / {{ period }};
        {%- endfor %}
        return array[
            fast_ema - slow_ema, signal_ema, fast_ema - slow_ema - signal_ema, plus_di, minus_di, adx,
            {%- for period in p.rsi %}
            case
                when gain_{{ period }} + loss_{{ period }} > 0
                    then 100 * (gain_{{ period }} / (gain_{{ period }} + loss_{{ period }}))
                else 0
            end,
            {%- endfor %}
            bar_index + 1, new_high, new_low, new_close, slow_ema, fast_ema, signal_ema, tr_sum, plus_dm, minus_dm, adx
            {%- for period in p.rsi %}, gain_{{ period }}, loss_{{ period }}{% endfor %}
        ];
    end if;

    -- The warm-up bars: each smoother's seed, then its steps.
    change := new_close - state[{{ base + 4 }}];
    up_move := new_high - state[{{ base + 2 }}];
    down_move := state[{{ base + 3 }}] - new_low;
    -- TA-Lib's TRUE_RANGE: max(high - low, |high - previous close|, |low - previous close|)
    true_range := greatest(
        new_high - new_low, abs(new_high - state[{{ base + 4 }}]), abs(new_low - state[{{ base + 4 }}])
    );

    -- RSI (ta_RSI.c): bars 1..n sum the gains and losses, bar n divides them (SMA seed),
    -- then avg = (avg * (n - 1) + today) / n
    {%- for period in p.rsi %}
    {%- set g = base + 11 + 2 * loop.index - 1 %}
    if bar_index > {{ period }} then
        gain_{{ period }} := (
            case when state[{{ g }}] < 1e-300 then 0 else state[{{ g }}] end * {{ period - 1 }} + greatest(change, 0)
        ) / {{ period }};
        loss_{{ period }} := (
            case when state[{{ g + 1 }}] < 1e-300 then 0 else state[{{ g + 1 }}] end * {{ period - 1 }}
            + greatest(-change, 0)
        ) / {{ period }};
    elsif bar_index = {{ period }} then
        gain_{{ period }} := (state[{{ g }}] + greatest(change, 0)) / {{ period }};
        loss_{{ period }} := (state[{{ g + 1 }}] + greatest(-change, 0)) / {{ period }};
    else
        gain_{{ period }} := state[{{ g }}] + greatest(change, 0);
        loss_{{ period }} := state[{{ g + 1 }}] + greatest(-change, 0);
    end if;
    {%- endfor %}

    -- MACD (ta_MACD.c on ta_EMA.c): the slow EMA is seeded by the SMA of bars 0..slow-1, the
    -- fast EMA by the SMA of the `fast` bars ending on the same bar; EMA = (x - EMA) * k + EMA,
    -- k = 2 / (n + 1). The signal EMA is seeded by the SMA of the first `signal` MACD values.
    if bar_index >= {{ p.slow }} then
        slow_ema := (new_close - state[{{ base + 5 }}]) * (2.0::double precision / {{ p.slow + 1 }})
            + case when abs(state[{{ base + 5 }}]) < 1e-300 then 0 else state[{{ base + 5 }}] end;
        fast_ema := (new_close - state[{{ base + 6 }}]) * (2.0::double precision / {{ p.fast + 1 }})
            + case when abs(state[{{ base + 6 }}]) < 1e-300 then 0 else state[{{ base + 6 }}] end;
    else
        slow_ema := state[{{ base + 5 }}] + new_close;
        fast_ema := state[{{ base + 6 }}] + case when bar_index >= {{ p.slow - p.fast }} then new_close else 0 end;
        if bar_index = {{ p.slow - 1 }} then
            slow_ema := slow_ema / {{ p.slow }};
            fast_ema := fast_ema / {{ p.fast }};
        end if;
    end if;
    macd_line := fast_ema - slow_ema;
    if bar_index > {{ p.slow + p.signal - 2 }} then
        signal_ema := (macd_line - state[{{ base + 7 }}]) * (2.0::double precision / {{ p.signal + 1 }})
            + case when abs(state[{{ base + 7 }}]) < 1e-300 then 0 else state[{{ base + 7 }}] end;
    elsif bar_index = {{ p.slow + p.signal - 2 }} then
        signal_ema := (state[{{ base + 7 }}] + macd_line) / {{ p.signal }};
    elsif bar_index >= {{ p.slow - 1 }} then
        signal_ema := state[{{ base + 7 }}] + macd_line;
    end if;

    -- +DI, -DI, ADX (ta_PLUS_DI.c, ta_MINUS_DI.c, ta_ADX.c): bars 1..n-1 sum TR, +DM1, -DM1;
    -- then sum = sum - sum / n + today; DI = 100 * DM / TR (0 when TR = 0); DX skipped when
    -- TR = 0 or the DI sum is within TA_IS_ZERO's 1e-14 of 0; the first ADX is the sum of the
    -- DX of bars n..2n-1 over n, then ADX = (ADX * (n - 1) + DX) / n.
    if bar_index >= {{ a }} then
        tr_sum := case when state[{{ base + 8 }}] < 1e-300 then 0
            else state[{{ base + 8 }}] - state[{{ base + 8 }}] / {{ a }} end + true_range;
        plus_dm := case when state[{{ base + 9 }}] < 1e-300 then 0
            else state[{{ base + 9 }}] - state[{{ base + 9 }}] / {{ a }} end
            + case when up_move > 0 and up_move > down_move then up_move else 0 end;
        minus_dm := case when state[{{ base + 10 }}] < 1e-300 then 0
            else state[{{ base + 10 }}] - state[{{ base + 10 }}] / {{ a }} end
            + case when down_move > 0 and down_move > up_move then down_move else 0 end;
        if tr_sum > 0 then
            plus_di := 100 * (plus_dm / tr_sum);
            minus_di := 100 * (minus_dm / tr_sum);
            if minus_di + plus_di >= 1e-14 then
                dx := 100 * (abs(minus_di - plus_di) / (minus_di + plus_di));
            end if;
        end if;
        adx := state[{{ base + 11 }}];
        if bar_index > {{ 2 * a - 1 }} then
            if dx is not null then
                adx := (case when adx < 1e-300 then 0 else adx end * {{ a - 1 }} + dx) / {{ a }};
            end if;
        elsif bar_index = {{ 2 * a - 1 }} then
            adx := (adx + coalesce(dx, 0)) / {{ a }};
        else
            adx := adx + coalesce(dx, 0);
        end if;
    else
        tr_sum := state[{{ base + 8 }}] + true_range;
        plus_dm := state[{{ base + 9 }}] + case when up_move > 0 and up_move > down_move then up_move else 0 end;
        minus_dm := state[{{ base + 10 }}]
            + case when down_move > 0 and down_move > up_move then down_move else 0 end;
        adx := 0;
    end if;

    return array[
        case when bar_index >= {{ p.slow + p.signal - 2 }} then macd_line end,
        case when bar_index >= {{ p.slow + p.signal - 2 }} then signal_ema end,
        case when bar_index >= {{ p.slow + p.signal - 2 }} then macd_line - signal_ema end,
        case when bar_index >= {{ a }} then plus_di end,
        case when bar_index >= {{ a }} then minus_di end,
        case when bar_index >= {{ 2 * a - 1 }} then adx end,
        {%- for period in p.rsi %}
        case when bar_index >= {{ period }} then
            case
                when gain_{{ period }} + loss_{{ period }} > 0
                    then 100 * (gain_{{ period }} / (gain_{{ period }} + loss_{{ period }}))
                else 0
            end
        end,
        {%- endfor %}
        bar_index + 1, new_high, new_low, new_close, slow_ema, fast_ema, signal_ema, tr_sum, plus_dm, minus_dm, adx
        {%- for period in p.rsi %}, gain_{{ period }}, loss_{{ period }}{% endfor %}
    ];
end
$body$;

create or replace aggregate {{ name }}(double precision, double precision, double precision) (
    sfunc = {{ name }}_step,
    stype = double precision[],
    initcond = '{}'
);
{%- endmacro %}
