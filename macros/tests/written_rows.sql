{#-
    Data tests on an incremental build check the rows it wrote: every generic test reads its
    model through get_where_subquery (dbt's hook for the `where` config), so when the model was
    built incrementally in this very invocation, the test reads only the (pair, minute) ranges
    that build rewrote (build_state.model_pairs; a join on pair and an index range on
    (pair, ts_utc), never a scan). The rest was checked by the build that wrote it; the unique
    index on (pair, ts_utc) guards uniqueness across builds. Everything is checked on a full
    build (--full-refresh, a first build), on a plain `dbt test`, and on demand with
    `--vars '{"full_tests": true}'` (`bqx build --full-tests`). The subquery keeps the model's
    name as its alias, so a test's expressions may qualify columns with it.
-#}
{% macro default__get_where_subquery(relation) -%}
    {%- set where = config.get('where', '') -%}
    {%- set written = written_rows_of(relation) -%}
    {%- if written or where -%}
        {%- set filtered -%}
            (
                select tested_rows.*
                from {{ relation }} as tested_rows
                {%- if written %}
                inner join build_state.model_pairs as written_ranges
                    on
                        written_ranges.model = '{{ relation.identifier }}'
                        and written_ranges.invocation_id = '{{ invocation_id }}'
                        and tested_rows.pair = written_ranges.pair
                        and tested_rows.ts_utc between written_ranges.rewrote_from_ts and written_ranges.rewrote_to_ts
                {%- endif %}
                where {{ where if where else 'true' }}
            ) as {{ relation.identifier }}
        {%- endset -%}
        {{ return(filtered) }}
    {%- endif -%}
    {{ return(relation) }}
{%- endmacro %}


{#- True when `relation` is a model this invocation built incrementally (not in full). -#}
{% macro written_rows_of(relation) -%}
    {%- if not execute or flags.WHICH != 'build' or var('full_tests', false) or relation.identifier is none -%}
        {{ return(false) }}
    {%- endif -%}
    {%- set built = run_query(
        "select count(*) from build_state.model_runs where invocation_id = '" ~ invocation_id
        ~ "' and model = '" ~ relation.identifier ~ "' and not full_refresh") -%}
    {{ return(built.rows[0][0] > 0) }}
{%- endmacro %}
