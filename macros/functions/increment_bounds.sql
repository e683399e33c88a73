{#-
    bqx_functions.increment_bounds(input, pair, changed_from, changed_to, lookback_bars,
    grid_bars, reference_bars, forward_bars, back_bars, read_ahead_bars): for one pair whose
    input changed over [changed_from, changed_to], the rows a model must rewrite (emit) and the
    input rows it must read, as minutes. In bars of the input's absolute bar_number:
      emit  from the first changed bar - back_bars
            to the last changed bar + forward_bars (forward_bars NULL, or changed_to infinite:
            to the pair's end);
      read  from the first emitted bar - lookback_bars, aligned down to a multiple of grid_bars,
            minus reference_bars (where every block-restarted running sum starts in a full
            build), to the last emitted bar + read_ahead_bars.
    moving_columns (recursive smoothers: the technical models): the restart must see a price
    move well before the bars it emits. In a flat run the smoothers' gains, losses, DM and TR
    decay to exactly 0 in a restart but stay tiny and positive in a full build, whose ratios
    (RSI, ±DI, ADX's DX) keep the values of the last move (TA-Lib's too), where the restart
    gives 0/0 = 0. So the read starts half of lookback_bars before the last bar, at or before
    half of lookback_bars before the first emitted bar, whose moving_columns changed (the
    pair's first bar if none): in a market that moves that is exactly lookback_bars before the
    first emitted bar; after a flat run it reaches back past the run. Every restarted state then
    differs from a full build's by (1 - 1/14)^(lookback_bars / 2) of its size (< 1e-32 at 2000:
    below float8's resolution). Found by walking back in growing chunks on (pair, bar_number).
    Index lookups on (pair, ts_utc) and (pair, bar_number) of the input: a few probes per pair.
    Used by prepare_increment() (the changes to consume) and by `bqx audit` (the minutes to
    check): one definition of "the history a row needs".
-#}
{% macro create_increment_bounds_function() -%}
create schema if not exists bqx_functions;
-- the signature before moving_columns: a call would be ambiguous with both
drop function if exists bqx_functions.increment_bounds(
    regclass, text, timestamptz, timestamptz, integer, integer, integer, integer, integer, integer
);
create or replace function bqx_functions.increment_bounds(
    input_relation regclass,
    pair_name text,
    changed_from timestamptz,
    changed_to timestamptz,
    lookback_bars integer,
    grid_bars integer,
    reference_bars integer,
    forward_bars integer,
    back_bars integer,
    read_ahead_bars integer,
    moving_columns text[] default null,
    out emit_from_ts timestamptz,
    out emit_to_ts timestamptz,
    out read_from_ts timestamptz,
    out read_to_ts timestamptz,
    out input_rows boolean
)
language plpgsql stable
as $bounds$
declare
    first_changed integer;
    last_changed integer;
    emit_from_bar integer;
    emit_to_bar integer;
    read_from_bar integer;
    found_ts timestamptz;
    bar_ts constant text := 'select ts_utc from %s where pair = $1 and bar_number = $2';
    half_lookback integer;
    search_to integer;
    search_from integer;
    search_bars integer := 64;
    moved_bar integer;
    move_sql text;
begin
    execute format(
        'select bar_number + 1 from %s where pair = $1 and ts_utc < $2 order by ts_utc desc limit 1',
        input_relation
    ) into first_changed using pair_name, changed_from;
    first_changed := coalesce(first_changed, 0);
    execute format(
        'select bar_number from %s where pair = $1 and ts_utc <= $2 order by ts_utc desc limit 1',
        input_relation
    ) into last_changed using pair_name, changed_to;
    emit_from_bar := first_changed - back_bars;
    if forward_bars is not null and changed_to < 'infinity' then
        emit_to_bar := greatest(coalesce(last_changed, -1), first_changed - 1) + forward_bars;
    end if;
    read_from_bar := div(greatest(emit_from_bar - lookback_bars, 0), grid_bars) * grid_bars - reference_bars;
    if moving_columns is not null and read_from_bar > 0 then
        -- the last bar at or before search_to whose moving_columns differ from its predecessor's
        half_lookback := lookback_bars / 2;
        search_to := emit_from_bar - half_lookback;
        select
            'select max(steps.bar_number) from (select bar_number, '
            || string_agg(format('%1$I is distinct from lag(%1$I) over bars_in_order', moving_column), ' or ')
            || ' as moved from %s where pair = $1 and bar_number between $2 and $3'
            || ' window bars_in_order as (order by bar_number)) as steps'
            || ' where steps.moved and steps.bar_number > $2'
        into move_sql
        from unnest(moving_columns) as moving_column;
        loop
            search_from := greatest(search_to - search_bars, 0);
            execute format(move_sql, input_relation) into moved_bar using pair_name, search_from, search_to;
            exit when moved_bar is not null or search_from = 0;
            search_to := search_from;
            search_bars := search_bars * 8;
        end loop;
        read_from_bar := greatest(coalesce(moved_bar, 0) - (lookback_bars - half_lookback), 0);
    end if;

    if emit_from_bar <= 0 then
        emit_from_ts := '-infinity';
    elsif back_bars = 0 then
        emit_from_ts := changed_from;
    else
        execute format(bar_ts, input_relation) into emit_from_ts using pair_name, emit_from_bar;
        emit_from_ts := least(emit_from_ts, changed_from);
    end if;
    -- to the pair's end unless the last bar to emit (and the last to read) exists
    emit_to_ts := 'infinity';
    read_to_ts := 'infinity';
    if emit_to_bar is not null then
        execute format(bar_ts, input_relation) into found_ts using pair_name, emit_to_bar;
        if found_ts is not null then
            emit_to_ts := greatest(found_ts, changed_to);
            execute format(bar_ts, input_relation) into found_ts using pair_name, emit_to_bar + read_ahead_bars;
            if found_ts is not null then
                read_to_ts := greatest(found_ts, changed_to);
            end if;
        end if;
    end if;
    if read_from_bar <= 0 then
        read_from_ts := '-infinity';
    else
        execute format(bar_ts, input_relation) into read_from_ts using pair_name, read_from_bar;
    end if;
    execute format(
        'select exists (select from %s where pair = $1 and ts_utc between $2 and $3)', input_relation
    ) into input_rows using pair_name, emit_from_ts, emit_to_ts;
end
$bounds$
{%- endmacro %}
