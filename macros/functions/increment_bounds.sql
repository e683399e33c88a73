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
    Index lookups on (pair, ts_utc) and (pair, bar_number) of the input: a few probes per pair.
    Used by prepare_increment() (the changes to consume) and by `bqx audit` (the minutes to
    check): one definition of "the history a row needs".
-#}
{% macro create_increment_bounds_function() -%}
create schema if not exists bqx_functions;
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
