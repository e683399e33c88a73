{#-
    Calendar and trading-session features (model time_features): the maths lives here once;
    documented in macros/features/time.yml. No window: each bar's features depend on its own
    ts_utc only. Every calendar field is taken from ts_utc converted explicitly (`at time zone
    'UTC'` or the city's zone), never from the session's TimeZone.
-#}

{#- The four sessions: local opening hours [open, close) in the city's own zone, with its
    daylight saving, Monday to Friday in that city's local calendar. -#}
{% macro market_sessions() -%}
    {{ return([
        {'city': 'sydney', 'zone': 'Australia/Sydney', 'open_hour': 7, 'close_hour': 16},
        {'city': 'tokyo', 'zone': 'Asia/Tokyo', 'open_hour': 9, 'close_hour': 18},
        {'city': 'london', 'zone': 'Europe/London', 'open_hour': 8, 'close_hour': 17},
        {'city': 'new_york', 'zone': 'America/New_York', 'open_hour': 8, 'close_hour': 17},
    ]) }}
{%- endmacro %}


{#- The session pairs that can be open together (the others never overlap in UTC). -#}
{% macro market_session_overlaps() -%}
    {{ return([['sydney', 'tokyo'], ['tokyo', 'london'], ['london', 'new_york']]) }}
{%- endmacro %}


{% macro time_column_names() -%}
    {{ return(time_columns() | map(attribute='name') | list) }}
{%- endmacro %}


{#- The column specs (macros/catalog/feature_columns.sql) of time_features: no window, no warm-up. -#}
{% macro time_columns(domain=none) -%}
    {%- set columns = [] -%}
    {%- set precision = 'exact (integers and booleans)' -%}
    {%- set circle = 'float8, within 1e-9 of NumPy (a sine of an exact argument)' -%}
    {%- for entry in [
        ('hour', 'Hour of ts_utc in UTC, 0-23 (integer).', precision),
        ('minute_of_day', 'Minutes since 00:00 UTC, 0-1439 (integer): hour x 60 + minute.', precision),
        ('day_of_week', 'ISO day of the week of ts_utc in UTC, Monday = 1 ... Sunday = 7 (integer).', precision),
        ('hour_sin', 'sin(2 pi x minute_of_day / 1440): the UTC time of day (fractional hour / 24) on a circle,
            so 23:59 is next to 00:00.', circle),
        ('hour_cos', 'cos(2 pi x minute_of_day / 1440).', circle),
        ('dow_sin', 'sin(2 pi x (day_of_week - 1) / 7): the ISO weekday on a circle, Monday at angle 0.', circle),
        ('dow_cos', 'cos(2 pi x (day_of_week - 1) / 7).', circle),
    ] -%}
        {%- do columns.append(feature_column(entry[0], entry[1], precision=entry[2])) -%}
    {%- endfor -%}
    {%- for session in market_sessions() -%}
        {%- do columns.append(feature_column(
            'session_' ~ session.city,
            'TRUE when the {name} session is open: local time in {zone} (with its daylight saving) Monday to
            Friday in {zone}\'s own calendar, in [{open:02d}:00, {close:02d}:00).',
            values={'name': session.city.replace('_', ' ').title(), 'zone': session.zone,
                'open': session.open_hour, 'close': session.close_hour},
            precision=precision,
        )) -%}
    {%- endfor -%}
    {%- for overlap in market_session_overlaps() -%}
        {%- do columns.append(feature_column(
            'session_overlap_' ~ overlap | join('_'),
            'session_{0} and session_{1}: both sessions open.'.format(overlap[0], overlap[1]),
            precision=precision,
        )) -%}
    {%- endfor -%}
    {%- do columns.append(feature_column(
        'sessions_open', 'Number of the {n} sessions open (0-{n}, integer).',
        values={'n': market_sessions() | length}, precision=precision,
    )) -%}
    {%- for session in market_sessions() -%}
        {%- do columns.append(feature_column(
            'minutes_into_' ~ session.city,
            'Minutes since the {name} session opened that local day: ({zone} local hour - {open}) x 60 + local
            minute, 0 ... {last} (integer).',
            values={'name': session.city.replace('_', ' ').title(), 'zone': session.zone,
                'open': session.open_hour, 'last': (session.close_hour - session.open_hour) * 60 - 1},
            null_when='the session is closed (session_' ~ session.city ~ ' false)',
            null_allowed_when='not session_' ~ session.city,
            precision=precision,
        )) -%}
    {%- endfor -%}
    {{ return(columns) }}
{%- endmacro %}


{#- A select over `source` (ts_utc, one row per minute) giving ts_utc and every column of
    time_column_names(): the calendar of those minutes. The features depend on ts_utc only, so
    the model computes them once per minute, not once per pair and minute (see time_features).
    by_pair: `source` has one row per pair and minute (pair, ts_utc), carried through; on Citus
    (distributed by pair) each shard computes the calendar of its own pairs' minutes, since
    distinct minutes across pairs would gather every pair's minutes on the coordinator. -#}
{% macro time_features_sql(source, by_pair=false) -%}
with bar_clocks as (
    select
        {%- if by_pair %}
        bars.pair,
        {%- endif %}
        bars.ts_utc,
        bars.ts_utc at time zone 'UTC' as utc_time,
        {%- for session in market_sessions() %}
        bars.ts_utc at time zone '{{ session.zone }}' as {{ session.city }}_time{{ "," if not loop.last }}
        {%- endfor %}
        {{- planner_fence_column('bars') if by_pair }}
    from {{ source }} as bars
    -- a planner fence (offset 0 on plain PostgreSQL): computed once per row (a subquery the planner
    -- would otherwise inline into every expression that reads these columns, converting each
    -- timestamp many times)
    {{ planner_fence() }}
),

bar_calendars as (
    select
        {%- if by_pair %}
        bar_clocks.pair,
        {%- endif %}
        bar_clocks.ts_utc,
        extract(hour from bar_clocks.utc_time)::integer as hour,
        (extract(hour from bar_clocks.utc_time) * 60 + extract(minute from bar_clocks.utc_time))::integer
            as minute_of_day,
        extract(isodow from bar_clocks.utc_time)::integer as day_of_week,
        {%- for session in market_sessions() %}
        -- minutes since the session opened today in {{ session.zone }}; NULL when closed
        case
            when
                extract(isodow from bar_clocks.{{ session.city }}_time) between 1 and 5
                and extract(hour from bar_clocks.{{ session.city }}_time) >= {{ session.open_hour }}
                and extract(hour from bar_clocks.{{ session.city }}_time) < {{ session.close_hour }}
                then (
                    (extract(hour from bar_clocks.{{ session.city }}_time) - {{ session.open_hour }}) * 60
                    + extract(minute from bar_clocks.{{ session.city }}_time)
                )::integer
        end as minutes_into_{{ session.city }}{{ "," if not loop.last }}
        {%- endfor %}
        {{- planner_fence_column('bar_clocks') if by_pair }}
    from bar_clocks
    {{ planner_fence() }}
)

select
    {%- if by_pair %}
    bar_calendars.pair,
    {%- endif %}
    bar_calendars.ts_utc,
    bar_calendars.hour,
    bar_calendars.minute_of_day,
    bar_calendars.day_of_week,
    -- the time of day as a point on a circle (fractional hour: 23:59 is next to 00:00)
    sin(2 * pi() * bar_calendars.minute_of_day / 1440) as hour_sin,
    cos(2 * pi() * bar_calendars.minute_of_day / 1440) as hour_cos,
    -- the ISO weekday on a circle of 7 (Monday at angle 0)
    sin(2 * pi() * (bar_calendars.day_of_week - 1) / 7) as dow_sin,
    cos(2 * pi() * (bar_calendars.day_of_week - 1) / 7) as dow_cos,
    {%- for session in market_sessions() %}
    bar_calendars.minutes_into_{{ session.city }} is not null as session_{{ session.city }},
    {%- endfor %}
    {%- for overlap in market_session_overlaps() %}
    (
        bar_calendars.minutes_into_{{ overlap[0] }} is not null
        and bar_calendars.minutes_into_{{ overlap[1] }} is not null
    ) as session_overlap_{{ overlap | join('_') }},
    {%- endfor %}
    (
        {%- for session in market_sessions() %}
        (bar_calendars.minutes_into_{{ session.city }} is not null)::integer{{ " +" if not loop.last }}
        {%- endfor %}
    ) as sessions_open,
    {%- for session in market_sessions() %}
    bar_calendars.minutes_into_{{ session.city }}{{ "," if not loop.last }}
    {%- endfor %}
from bar_calendars
{%- endmacro %}
