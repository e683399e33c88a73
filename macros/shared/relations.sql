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
