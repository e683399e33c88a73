{#-
    Point-in-time retrieval: the features known at each event. Documented in
    macros/retrieval/retrieval.yml; the Python side is python/bqx/features.py.

    Semantics. A bar with open time ts_utc is known from ts_utc + 1 minute (its close). For an
    event (pair, event_time) the features are those of the last bar with
    ts_utc + 1 minute <= event_time, among the bars every feature model has built
    (built_through_per_pair); its age is event_time - (ts_utc + 1 minute); older than max_age
    (inclusive: an age of exactly max_age is kept) the features are NULL and
    feature_missing_reason says why:
      before_first_bar  the pair has no bar known at event_time (or no bar at all)
      stale             the newest known bar is older than max_age (every weekend event)
      not_built         a bar within max_age exists in staging.m1_index but the feature models
                        have not built it yet (run `bqx build`)
    A pair outside var('pairs') is an error of the caller (python/bqx/features.py refuses it
    before it reaches SQL).
-#}


{#- The SELECT giving every column of `events_relation` (a relation or CTE name with `pair` text
    and `event_time` timestamptz, any other columns passed through), then feature_ts_utc,
    feature_age, feature_missing_reason and the feature_matrix columns `columns` (default: all),
    one row per event row (duplicated events stay duplicated), in no particular order.

    method (how each event finds its bar; the result is the same):
      'window'  a merge of the events with the bars of their pairs and time range, sorted
                together per pair: one running max over the union gives each event its bar.
                The range starts at the newest bar before the first event's cutoff less max_age
                (one backward index step per pair), so every event finds its newest bar in it
                (or there is none: before_first_bar) and its age is reported however old.
                O((events + bars in range) log), whatever the events' spread: the choice for
                many events, and the only one on Citus (every step is per pair and runs on the
                pair's shard when the events are a table distributed by pair).
      'index'   per event, a probe of the bar opening at the minute before the event's minute (a
                hash or nested-loop join on the unique (pair, ts_utc) index: most events of a
                trading week hit it); an event left without a bar (a gap, a weekend) walks back
                m1_index's (pair, ts_utc) index to the newest earlier bar (LATERAL ... limit 1).
                O(events log bars), no sort of the bars: the faster on one server at every count
                measured (Citus refuses the lateral outer join).
    python/bqx/features.py picks 'index' on one server and 'window' on Citus (measured:
    bench/bench_retrieval.py). -#}
{% macro features_as_of(events_relation, columns=none, max_age=none, method='window', event_columns=none) -%}
{%- set max_age = max_age if max_age is not none else var('as_of_max_age') -%}
{%- set selected = feature_matrix_columns(columns) -%}
{%- set on_citus = distributed() -%}
{%- if method not in ('window', 'index') -%}
    {{ exceptions.raise_compiler_error("features_as_of: method must be 'window' or 'index', not '" ~ method ~ "'") }}
{%- endif -%}
{%- if method == 'index' and on_citus -%}
    {{ exceptions.raise_compiler_error("features_as_of: method 'index' needs a single server (Citus cannot push its walk back down to the shards): use method='window'") }}
{%- endif -%}
{%- if event_columns is none and events_relation is not string -%}
    {%- set event_columns = adapter.get_columns_in_relation(events_relation) | map(attribute='name') | list -%}
{%- endif -%}
{#- the events' other columns, carried through every step: by name when known, else as one
    composite of the event's row (a CTE's name), which Citus cannot ship to the shards -#}
{%- if event_columns is none -%}
    {%- set carried = ['event_row'] -%}
{%- else -%}
    {%- set carried = event_columns | reject('in', ['pair', 'event_time']) | list -%}
{%- endif -%}
{#- on Citus the steps over the events are inlined, not materialized: a materialized step is
    planned apart and its rows pulled to the coordinator; inline, every step runs on the shards -#}
{%- set inline = 'not materialized ' if on_citus else '' -%}
with as_of_events as {{ inline }}(
    -- the event's own columns as they came, its pair, time and cutoff
    select
        {%- if event_columns is none %}
        events as event_row,
        {%- else %}
        {%- for column in carried %}
        events.{{ column }},
        {%- endfor %}
        {%- endif %}
        events.pair,
        events.event_time,
        events.event_time - interval '1 minute' as cutoff_ts
    from {{ events_relation }} as events
),

as_of_frontier as materialized (
    -- per pair: the last bar every feature model has built. For every configured pair, not just
    -- the events' (28 x models index steps, milliseconds): a query that reads no table of the
    -- events runs apart, on the coordinator on Citus, where its per-pair lookups are router
    -- queries (run on a shard, they would nest distributed queries, which Citus refuses)
    {{ built_through_per_pair('select configured.pair from ' ~ pair_values() ~ ' as configured (pair)') }}
),
{%- if method == 'window' %}

as_of_event_ranges as {{ inline }}(
    -- per pair: the bars the events can reach, from the first event's cutoff less max_age to
    -- the last event's cutoff
    select
        as_of_events.pair,
        min(as_of_events.cutoff_ts) - interval '{{ max_age }}' as first_cutoff_ts,
        max(as_of_events.cutoff_ts) as last_cutoff_ts
    from as_of_events
    group by as_of_events.pair
),

as_of_timeline as (
    -- the events and the bars of their pair and time range as one sequence per pair; at an
    -- equal instant a bar (kind 0) sorts before an event (kind 1): a bar opening at the
    -- event's cutoff closes exactly at the event, so it is known. Each event carries its own
    -- row through the sequence (no numbering and no join back: a window numbering every
    -- event would not be partitioned by pair, and a join back on a number per pair was
    -- planned as a merge join on pair alone, 3x slower, measured). The events come first: their
    -- row's type is the one the bars' NULLs take
    select
        as_of_events.pair,
        as_of_events.cutoff_ts as instant,
        1 as kind,
        null::timestamptz as bar_ts,
        {{- as_of_carried('as_of_events', carried) }}
        as_of_events.event_time,
        as_of_events.cutoff_ts
    from as_of_events
    union all
    select
        bars.pair,
        bars.ts_utc as instant,
        0 as kind,
        bars.ts_utc as bar_ts,
        {{- as_of_carried(none, carried) }}
        null::timestamptz as event_time,
        null::timestamptz as cutoff_ts
    from as_of_event_ranges
    inner join {{ ref('m1_index') }} as bars
        on
            as_of_event_ranges.pair = bars.pair
            and bars.ts_utc >= as_of_event_ranges.first_cutoff_ts
            and bars.ts_utc <= as_of_event_ranges.last_cutoff_ts
    union all
    -- and the newest bar before the range (one backward step of the (pair, ts_utc) index per
    -- pair): older than max_age for every event, but an event whose newest bar it is gets its
    -- age reported, and an event with no bar before it is exactly before_first_bar
    select
        as_of_event_ranges.pair,
        bar_before_range.ts_utc as instant,
        0 as kind,
        bar_before_range.ts_utc as bar_ts,
        {{- as_of_carried(none, carried) }}
        null::timestamptz as event_time,
        null::timestamptz as cutoff_ts
    from as_of_event_ranges
    cross join lateral (
        {%- if on_citus %}
        -- Citus pushes neither a LIMIT nor an ungrouped aggregate down in a lateral subquery
        -- over a grouped one: a max per pair, which reads the pair's bars before the range on
        -- the pair's shard (an index range, not one step)
        select max(bars.ts_utc) as ts_utc
        from {{ ref('m1_index') }} as bars
        where
            bars.pair = as_of_event_ranges.pair
            and bars.ts_utc < as_of_event_ranges.first_cutoff_ts
        group by bars.pair
        {%- else %}
        select bars.ts_utc
        from {{ ref('m1_index') }} as bars
        where
            bars.pair = as_of_event_ranges.pair
            and bars.ts_utc < as_of_event_ranges.first_cutoff_ts
        order by bars.ts_utc desc
        limit 1
        {%- endif %}
    ) as bar_before_range
),

as_of_located as (
    -- each event's newest bar so far: a running max over its pair's sequence
    select
        as_of_timeline.pair,
        as_of_timeline.kind,
        {{- as_of_carried('as_of_timeline', carried) }}
        as_of_timeline.event_time,
        as_of_timeline.cutoff_ts,
        max(as_of_timeline.bar_ts) over timeline_so_far as found_bar_ts
    from as_of_timeline
    window timeline_so_far as (
        partition by as_of_timeline.pair order by as_of_timeline.instant, as_of_timeline.kind
        rows unbounded preceding
    )
),

as_of_matched as (
    -- the newest bar known at each event (NULL: the pair has none)
    select
        {{- as_of_carried('as_of_located', carried) }}
        as_of_located.pair,
        as_of_located.event_time,
        as_of_located.found_bar_ts as source_bar_ts
    from as_of_located
    where as_of_located.kind = 1
),
{%- else %}

as_of_found as (
    -- the bar opening at the cutoff's minute, when there is one (most events of a trading week):
    -- one hash or index join on m1_index's unique (pair, ts_utc)
    select
        {{- as_of_carried('as_of_events', carried) }}
        as_of_events.pair,
        as_of_events.event_time,
        as_of_events.cutoff_ts,
        same_minute.ts_utc as found_bar_ts
    from as_of_events
    left join {{ ref('m1_index') }} as same_minute
        on
            as_of_events.pair = same_minute.pair
            and (date_trunc('minute', as_of_events.cutoff_ts at time zone 'UTC') at time zone 'UTC')
            = same_minute.ts_utc
),

as_of_matched as (
    -- the events that found their bar as they are; the rest (a gap, a weekend) walk m1_index's
    -- (pair, ts_utc) index back to the newest earlier bar (it is older than max_age: its age is
    -- reported; or there is none). Two branches, not a coalesce over one lateral join: the
    -- lateral subquery would be set up for every event, found or not (1,000,000 events: 12 s
    -- -> 8 s for the keys, measured on 28 pairs x 2 months)
    select
        {{- as_of_carried('as_of_found', carried) }}
        as_of_found.pair,
        as_of_found.event_time,
        as_of_found.found_bar_ts as source_bar_ts
    from as_of_found
    where as_of_found.found_bar_ts is not null
    union all
    select
        {{- as_of_carried('as_of_found', carried) }}
        as_of_found.pair,
        as_of_found.event_time,
        walked_back.ts_utc as source_bar_ts
    from as_of_found
    left join lateral (
        select bars.ts_utc
        from {{ ref('m1_index') }} as bars
        where
            bars.pair = as_of_found.pair
            and bars.ts_utc <= as_of_found.cutoff_ts
        order by bars.ts_utc desc
        limit 1
    ) as walked_back on true
    where as_of_found.found_bar_ts is null
),
{%- endif %}

as_of_bars as (
    -- the bar whose features each event gets (feature_ts_utc NULL: none), and why not
    select
        {{- as_of_carried('as_of_matched', carried) }}
        as_of_matched.pair,
        as_of_matched.event_time,
        as_of_matched.event_time - (as_of_matched.source_bar_ts + interval '1 minute') as feature_age,
        case
            when as_of_matched.source_bar_ts is null then 'before_first_bar'
            when
                as_of_matched.event_time - (as_of_matched.source_bar_ts + interval '1 minute')
                > interval '{{ max_age }}'
                then 'stale'
            when
                as_of_frontier.built_through_ts is null
                or as_of_matched.source_bar_ts > as_of_frontier.built_through_ts
                then 'not_built'
        end as feature_missing_reason,
        as_of_matched.source_bar_ts
    from as_of_matched
    left join as_of_frontier
        on as_of_matched.pair = as_of_frontier.pair
),

as_of_feature_keys as {% if not on_citus %}materialized {% endif %}(
    -- computed once (not once per feature model it is joined with), its row count known to the
    -- planner, and in (pair, ts_utc) order so index probes of each model walk it forwards. On
    -- Citus not materialized: a materialized CTE is planned apart and its rows joined on the
    -- coordinator with every feature table pulled there; inline, the joins run on the shards
    select
        {{- as_of_carried('as_of_bars', carried) }}
        as_of_bars.pair,
        as_of_bars.event_time,
        as_of_bars.feature_age,
        as_of_bars.feature_missing_reason,
        case when as_of_bars.feature_missing_reason is null then as_of_bars.source_bar_ts end as feature_ts_utc
    from as_of_bars
    order by as_of_bars.pair, as_of_bars.source_bar_ts
)

{%- set leading = [] -%}
{%- if event_columns is none -%}
    {%- do leading.append('(as_of_feature_keys.event_row).*') -%}
{%- else -%}
    {%- for column in event_columns -%}
        {%- do leading.append('as_of_feature_keys.' ~ column) -%}
    {%- endfor -%}
{%- endif -%}
{%- do leading.extend([
    'as_of_feature_keys.feature_ts_utc',
    'as_of_feature_keys.feature_age',
    'as_of_feature_keys.feature_missing_reason',
]) %}
{{ select_with_features(leading, 'as_of_feature_keys', 'feature_ts_utc', selected) }}
{%- endmacro %}


{#- The events' carried columns as select-list lines (`relation`.column, or typed by the first
    branch of a union: NULL as column when `relation` is none). -#}
{% macro as_of_carried(relation, carried) -%}
{%- for column in carried %}
        {{ relation ~ '.' ~ column if relation is not none else 'null as ' ~ column }},
{%- endfor %}
{%- endmacro %}


{#- `select <leading>, <the selected feature columns> from <keys>` joined with each feature model
    holding a selected column on (pair, <keys>.<ts_column>): left joins on the models' unique
    (pair, ts_utc) index, so a key without a feature row gives NULLs. The planner picks index
    probes or a hash per model from the number of keys; features_as_of hands it a materialized
    key set so that number is known (with the keys computed inline it estimated millions and
    hashed every model's whole table even for 10,000 events: 10 s -> 3 s, measured on 28 pairs x
    1 month; LATERAL probes forced for every count measured slower for 200,000 events). -#}
{% macro select_with_features(leading, keys, ts_column, selected) -%}
select
    {{ leading | join(',\n    ') }}
    {%- for column in selected %},
    {{ column.model }}.{{ column.column }} as {{ column.matrix_column }}
    {%- endfor %}
from {{ keys }}
{%- for model in selected | map(attribute='model') | unique %}
left join {{ ref(model) }} as {{ model }}
    on
        {{ keys }}.pair = {{ model }}.pair
        and {{ keys }}.{{ ts_column }} = {{ model }}.ts_utc
{%- endfor %}
{%- endmacro %}


{#- The feature_matrix columns to retrieve, as (model, column, matrix_column) in feature_matrix's
    order: `columns` (matrix names; an unknown one is an error naming it) or every column. -#}
{% macro feature_matrix_columns(columns=none) -%}
    {%- set known = [] -%}
    {%- for entry in feature_models() -%}
        {%- for column in entry.column_names() -%}
            {%- do known.append({'model': entry.model, 'column': column, 'matrix_column': entry.prefix ~ column}) -%}
        {%- endfor -%}
    {%- endfor -%}
    {%- if columns is none -%}
        {{ return(known) }}
    {%- endif -%}
    {%- set by_name = {} -%}
    {%- for column in known -%}
        {%- do by_name.update({column.matrix_column: column}) -%}
    {%- endfor -%}
    {%- set chosen = [] -%}
    {%- for name in columns -%}
        {%- if name not in by_name -%}
            {{ exceptions.raise_compiler_error("features_as_of: '" ~ name ~ "' is not a column of feature_matrix") }}
        {%- endif -%}
        {%- do chosen.append(by_name[name]) -%}
    {%- endfor -%}
    {{ return(chosen) }}
{%- endmacro %}


{#- Per pair of `pairs_query` (a query returning a column `pair`): built_through_ts, the last bar
    that EVERY feature model holds (the smallest of the models' newest rows; NULL when a model holds
    none of the pair): one backward index step per pair and model, no scan. -#}
{% macro built_through_per_pair(pairs_query) -%}
{%- set models = feature_models() | map(attribute='model') | list -%}
select
    wanted_pairs.pair,
    case
        when num_nulls(
            {%- for model in models %}
            newest_rows.{{ model }}_ts{{ "," if not loop.last }}
            {%- endfor %}
        ) = 0
            then least(
                {%- for model in models %}
                newest_rows.{{ model }}_ts{{ "," if not loop.last }}
                {%- endfor %}
            )
    end as built_through_ts
from ({{ pairs_query }}) as wanted_pairs
cross join lateral (
    -- a probe per model and pair as a function: shard-local on Citus, where a correlated
    -- subquery per pair cannot run (macros/distribution/distribution.sql)
    select
        {%- for model in models %}
        bqx_functions.pair_last_ts('{{ ref(model) }}'::regclass, wanted_pairs.pair) as {{ model }}_ts
        {{- "," if not loop.last }}
        {%- endfor %}
) as newest_rows
{%- endmacro %}
