{#- A model's relation looked up in the graph, not through ref(): the warm-up test's and the
    targets' predicates read other models, and a test that ref()s one would be selected by dbt's
    eager indirect selection whenever that model is (e.g. `--select +time_features` would run the
    volume tests without volume_features). The models read are upstream of every model tested.
    Outside dbt's execution (parsing, the Python catalog) there is no graph: `<schema>.<model>`,
    the schema generate_schema_name gives it (staging, features or marts). -#}
{% macro graph_model_relation(model_name, schema) -%}
    {%- if execute -%}
        {%- for node in graph.nodes.values() if node.resource_type == 'model' and node.name == model_name -%}
            {{ return(api.Relation.create(database=node.database, schema=node.schema, identifier=node.alias)) }}
        {%- endfor -%}
    {%- endif -%}
    {{ return(schema ~ '.' ~ model_name) }}
{%- endmacro %}


{#- staging.m1_index, for the predicates of the market models' and the targets' tests. -#}
{% macro market_index_relation() -%}
    {{ return(graph_model_relation('m1_index', 'staging')) }}
{%- endmacro %}


{#- For the NULL rules of the market models: whether one of the last `bars` bars of m1_index up
    to the tested row of `model_name` (the row's own bar included, or only those before it)
    satisfies `condition`, a predicate over `columns` of those bars, aliased last_bars. The
    subquery runs where the rule evaluates it: the rules put it behind a NULL test. -#}
{% macro last_bars_exist(model_name, bars, columns, condition, include_row=true) -%}
exists (
    select 1
    from (
        select {% for column in columns %}window_bars.{{ column }}{{ ', ' if not loop.last }}{% endfor %}
        from {{ market_index_relation() }} as window_bars
        where window_bars.pair = {{ model_name }}.pair and window_bars.ts_utc {{ '<=' if include_row else '<' }} {{ model_name }}.ts_utc
        order by window_bars.ts_utc desc
        limit {{ bars }}
    ) as last_bars
    where {{ condition }}
)
{%- endmacro %}
