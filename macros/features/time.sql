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
    {%- set names = ['hour', 'minute_of_day', 'day_of_week', 'hour_sin', 'hour_cos', 'dow_sin', 'dow_cos'] -%}
    {%- for session in market_sessions() -%}
        {%- do names.append('session_' ~ session.city) -%}
    {%- endfor -%}
    {%- for overlap in market_session_overlaps() -%}
        {%- do names.append('session_overlap_' ~ overlap | join('_')) -%}
    {%- endfor -%}
    {%- do names.append('sessions_open') -%}
    {%- for session in market_sessions() -%}
        {%- do names.append('minutes_into_' ~ session.city) -%}
    {%- endfor -%}
    {{ return(names) }}
{%- endmacro %}


{#- A select over `source` (ts_utc, one row per minute) giving ts_utc and every column of
    time_column_names(): the calendar of those minutes. The features depend on ts_utc only, so
    the model computes them once per minute, not once per pair and minute (see time_features). -#}
{% macro time_features_sql(source) -%}
with bar_clocks as (
    select
        bars.ts_utc,
        bars.ts_utc at time zone 'UTC' as utc_time,
        {%- for session in market_sessions() %}
        bars.ts_utc at time zone '{{ session.zone }}' as {{ session.city }}_time{{ "," if not loop.last }}
        {%- endfor %}
    from {{ source }} as bars
    -- offset 0: computed once per row (a subquery the planner would otherwise inline into every
    -- expression that reads these columns, converting each timestamp many times)
    offset 0
),

bar_calendars as (
    select
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
    from bar_clocks
    offset 0
)

select
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
