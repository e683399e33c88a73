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
    {%- set names = [] -%}
    {%- for w in var('rolling_windows') -%}
        {%- for metric in ['mean', 'std', 'z', 'ratio', 'imbalance', 'vwap_dev'] -%}
            {%- do names.append('volume_' ~ metric ~ '_w' ~ w) -%}
        {%- endfor -%}
    {%- endfor -%}
    {%- do names.append('volume_tod_ratio_d' ~ volume_tod_days()) -%}
    {{ return(names) }}
{%- endmacro %}


{#- A select over `source` (pair, ts_utc, high_idx, low_idx, close_idx, volume, is_new) giving
    pair, ts_utc, is_new and every column of volume_column_names().

    Every window aggregate slides in O(1) per row: sums of bigint (volume, volume², signed
    volume) accumulate exactly in 128-bit integers and leave the frame through an inverse
    transition; the price × volume sum is numeric for the same reason (a float8 sum has no inverse
    and would be re-added over the whole frame for every row). The final float8 arithmetic starts
    from those exact sums. -#}
{% macro volume_features_sql(source) -%}
{%- set tod_bars = volume_tod_days() * 1440 -%}
with volume_steps as (
    select
        bars.pair,
        bars.ts_utc,
        bars.is_new,
        bars.close_idx,
        bars.volume,
        bars.volume * bars.volume as volume_squared,
        ((bars.high_idx + bars.low_idx + bars.close_idx) / 3 * bars.volume)::numeric as typical_volume,
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
    from {{ source }} as bars
    window bars_in_order as (partition by bars.pair order by bars.ts_utc)
),

volume_windows as (
    select
        volume_steps.pair,
        volume_steps.ts_utc,
        volume_steps.is_new,
        volume_steps.close_idx,
        volume_steps.volume::double precision as volume,
        volume_steps.bar_number,
        {%- for w in var('rolling_windows') %}
        count(volume_steps.volume) over window_{{ w }} as volume_count_w{{ w }},
        count(volume_steps.signed_volume) over window_{{ w }} as signed_count_w{{ w }},
        -- exact below 2^53 (9e15): far above any window's tick volume
        sum(volume_steps.volume) over window_{{ w }}::double precision as volume_sum_w{{ w }},
        sum(volume_steps.signed_volume) over window_{{ w }}::double precision as signed_sum_w{{ w }},
        -- W · Σv² − (Σv)² in exact integers: W (W − 1) × the sample variance, never negative
        (
            {{ w }} * sum(volume_steps.volume_squared) over window_{{ w }}
            - sum(volume_steps.volume) over window_{{ w }} * sum(volume_steps.volume) over window_{{ w }}
        )::double precision as volume_spread_w{{ w }},
        sum(volume_steps.typical_volume) over window_{{ w }}::double precision as price_volume_sum_w{{ w }},
        {%- endfor %}
        -- the same UTC minute of day among the previous {{ tod_bars }} bars (bar_number is
        -- the bar's position in the pair, so the range counts bars, not days)
        avg(volume_steps.volume) over (
            partition by volume_steps.pair, volume_steps.minute_of_day
            order by volume_steps.bar_number
            range between {{ tod_bars }} preceding and 1 preceding
        )::double precision as tod_volume_mean
    from volume_steps
    window
        {%- for w in var('rolling_windows') %}
        window_{{ w }} as (
            partition by volume_steps.pair order by volume_steps.ts_utc
            rows between {{ w - 1 }} preceding and current row
        ){{ "," if not loop.last }}
        {%- endfor %}
)

select
    volume_windows.pair,
    volume_windows.ts_utc,
    volume_windows.is_new,
    {%- for w in var('rolling_windows') %}
    {#- full window (W volumes) with some volume in it; all-zero windows carry no information #}
    {%- set has_volume = 'volume_windows.volume_count_w' ~ w ~ ' = ' ~ w
        ~ ' and volume_windows.volume_sum_w' ~ w ~ ' > 0' %}
    {%- set total = 'volume_windows.volume_sum_w' ~ w %}
    {%- set std = 'sqrt(volume_windows.volume_spread_w' ~ w ~ ' / ' ~ w * (w - 1) ~ ')' %}
    case when {{ has_volume }} then {{ total }} / {{ w }} end as volume_mean_w{{ w }},
    case when {{ has_volume }} then {{ std }} end as volume_std_w{{ w }},
    case
        -- (v − Σv/W) / std = (W·v − Σv) / (W · std): W·v − Σv is exact
        when {{ has_volume }} and volume_windows.volume_spread_w{{ w }} > 0
            then ({{ w }} * volume_windows.volume - {{ total }}) / ({{ w }} * {{ std }})
    end as volume_z_w{{ w }},
    case when {{ has_volume }} then {{ w }} * volume_windows.volume / {{ total }} end as volume_ratio_w{{ w }},
    case
        when volume_windows.signed_count_w{{ w }} = {{ w }} and {{ has_volume }}
            then volume_windows.signed_sum_w{{ w }} / {{ total }}
    end as volume_imbalance_w{{ w }},
    case
        when {{ has_volume }}
            then volume_windows.close_idx * {{ total }} / volume_windows.price_volume_sum_w{{ w }} - 1
    end as volume_vwap_dev_w{{ w }},
    {%- endfor %}
    case
        when volume_windows.bar_number > {{ tod_bars }}
            then volume_windows.volume / nullif(volume_windows.tod_volume_mean, 0)
    end as volume_tod_ratio_d{{ volume_tod_days() }}
from volume_windows
{%- endmacro %}


{#- m1_index as a relation looked up in the graph, not through ref(): a test that ref()s m1_index
    would be selected (eager indirect selection) whenever staging is, even without its model. -#}
{% macro market_index_relation() -%}
    {%- if execute -%}
        {%- for node in graph.nodes.values() if node.resource_type == 'model' and node.name == 'm1_index' -%}
            {{ return(api.Relation.create(database=node.database, schema=node.schema, identifier=node.alias)) }}
        {%- endfor -%}
    {%- endif -%}
    {{ return('m1_index') }}
{%- endmacro %}


{#- For the YAML's warmup_nulls tests (null_allowed_when): `column` of the tested row of
    `model_name` is NULL and the W bars of m1_index ending at that row have no volume.
    The subquery runs only on NULL rows. -#}
{% macro volume_window_is_silent(model_name, column, w) -%}
case
    when {{ model_name }}.{{ column }} is null
        then not exists (
            select 1
            from (
                select window_bars.volume
                from {{ market_index_relation() }} as window_bars
                where window_bars.pair = {{ model_name }}.pair and window_bars.ts_utc <= {{ model_name }}.ts_utc
                order by window_bars.ts_utc desc
                limit {{ w }}
            ) as last_bars
            where last_bars.volume <> 0
        )
    else false
end
{%- endmacro %}


{#- Likewise for volume_tod_ratio: no bar with volume at the tested row's UTC minute of day
    among the previous volume_tod_days × 1440 bars of m1_index. -#}
{% macro volume_tod_is_silent(model_name, column) -%}
case
    when {{ model_name }}.{{ column }} is null
        then not exists (
            select 1
            from (
                select
                    window_bars.ts_utc,
                    window_bars.volume
                from {{ market_index_relation() }} as window_bars
                where window_bars.pair = {{ model_name }}.pair and window_bars.ts_utc < {{ model_name }}.ts_utc
                order by window_bars.ts_utc desc
                limit {{ volume_tod_days() * 1440 }}
            ) as previous_bars
            where
                previous_bars.volume <> 0
                -- bars open on whole minutes: the same minute of day is a whole number of days apart
                and mod(extract(epoch from {{ model_name }}.ts_utc - previous_bars.ts_utc)::bigint, 86400) = 0
        )
    else false
end
{%- endmacro %}
