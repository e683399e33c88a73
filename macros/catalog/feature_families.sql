{#-
    The registry of feature families: the one list of them. Read by feature_matrix (its columns
    and joins), the data-quality gap flags (data_quality_gap_spans), the warm-up test
    (macros/tests/), `bqx docs generate-yaml` (the models' YAML) and the Python
    catalog (python/bqx/catalog.py, through feature_catalog() below). Documented in
    macros/catalog/catalog.yml; adding a family: README, "Adding a feature family".

    Per family, in feature_matrix's column order:
      name              the family's name (the catalog's `family`)
      models            its models: model, domain ('rate' | 'bqx' for the families computed on
                        both domains, none otherwise) and prefix (its columns' prefix in
                        feature_matrix: the domain's, '' for single-domain families)
      column_names      the macro naming its columns, in the models' order (the models' select)
      columns           the macro returning its column specs for a domain (name, warm-up, NULL
                        rule, description: macros/catalog/feature_columns.sql)
      gap_window        the data-quality flag covering it (gap_in_<gap_window>_window; families
                        sharing a window list share one), none without a finite window
      window_span       bars its longest feature reads on either domain (none without a window)
      window_span_rule  how window_span follows from the vars, for the docs
      laggable          whether the dataset builder lags its columns
-#}
{% macro feature_families() -%}
    {%- set series = var('bqx_series_window') | int -%}
    {%- set both_domains = [
        {'domain': 'rate', 'prefix': 'rate_'},
        {'domain': 'bqx', 'prefix': 'bqx_'},
    ] -%}
    {%- set families = [
        {
            'name': 'bqx', 'models': [{'model': 'bqx', 'domain': none, 'prefix': ''}],
            'column_names': bqx_column_names, 'columns': bqx_columns,
            'gap_window': 'bqx', 'window_span': (var('bqx_windows') | max) + 1,
            'window_span_rule': 'max(bqx_windows) + 1: bqx_wW reads close_idx over W + 1 bars',
            'laggable': true,
        },
        {
            'name': 'regression', 'models': domain_models('reg', both_domains),
            'column_names': reg_column_names, 'columns': reg_columns,
            'gap_window': 'reg', 'window_span': (var('reg_windows') | max) + series,
            'window_span_rule': 'max(reg_windows) + bqx_series_window: reg_bqx reads W values of bqx_wS, each '
                ~ 'reading S + 1 closes',
            'laggable': true,
        },
        {
            'name': 'bollinger', 'models': domain_models('bollinger', both_domains),
            'column_names': bollinger_column_names, 'columns': bollinger_columns,
            'gap_window': 'bollinger', 'window_span': (var('bollinger_windows') | max) + series,
            'window_span_rule': 'max(bollinger_windows) + bqx_series_window: bollinger_bqx reads W values of bqx_wS',
            'laggable': true,
        },
        {
            'name': 'statistics', 'models': domain_models('statistics', both_domains),
            'column_names': statistics_column_names, 'columns': statistics_columns,
            'gap_window': 'rolling', 'window_span': (var('rolling_windows') | max) + series,
            'window_span_rule': 'max(rolling_windows) + bqx_series_window: statistics_bqx reads W values of bqx_wS',
            'laggable': true,
        },
        {
            'name': 'technical', 'models': domain_models('technical', both_domains),
            'column_names': technical_column_names, 'columns': technical_columns,
            'gap_window': none, 'window_span': none,
            'window_span_rule': 'recursive smoothers: no finite window (see minutes_since_prev_bar)',
            'laggable': true,
        },
        {
            'name': 'volatility', 'models': domain_models('volatility', both_domains),
            'column_names': volatility_column_names, 'columns': volatility_columns,
            'gap_window': 'volatility', 'window_span': (var('volatility_windows') | max) + series + 1,
            'window_span_rule': 'max(volatility_windows) + bqx_series_window + 1: volatility_bqx reads W + 1 values '
                ~ 'of bqx_wS',
            'laggable': true,
        },
        {
            'name': 'volume', 'models': [{'model': 'volume_features', 'domain': none, 'prefix': ''}],
            'column_names': volume_column_names, 'columns': volume_columns,
            'gap_window': 'rolling', 'window_span': (var('rolling_windows') | max) + 1,
            'window_span_rule': 'max(rolling_windows) + 1: volume_imbalance_wW reads W + 1 closes (the days-long '
                ~ 'window of volume_tod_ratio always spans a weekend: not covered)',
            'laggable': true,
        },
        {
            'name': 'spread', 'models': [{'model': 'spread_features', 'domain': none, 'prefix': ''}],
            'column_names': spread_column_names, 'columns': spread_columns,
            'gap_window': 'rolling', 'window_span': var('rolling_windows') | max,
            'window_span_rule': 'max(rolling_windows): spread_bps_*_wW read W bars',
            'laggable': true,
        },
        {
            'name': 'time', 'models': [{'model': 'time_features', 'domain': none, 'prefix': ''}],
            'column_names': time_column_names, 'columns': time_columns,
            'gap_window': none, 'window_span': none, 'window_span_rule': 'no window: each bar\'s own ts_utc',
            'laggable': false,
        },
        {
            'name': 'data_quality', 'models': [{'model': 'data_quality_features', 'domain': none, 'prefix': ''}],
            'column_names': data_quality_column_names, 'columns': data_quality_columns,
            'gap_window': none, 'window_span': none, 'window_span_rule': 'flags about the bars themselves',
            'laggable': false,
        },
    ] -%}
    {{ return(families) }}
{%- endmacro %}


{#- The models of a family computed on both domains: <family>_rate, <family>_bqx. -#}
{% macro domain_models(model_prefix, domains) -%}
    {%- set models = [] -%}
    {%- for domain in domains -%}
        {%- do models.append({
            'model': model_prefix ~ '_' ~ domain.domain, 'domain': domain.domain, 'prefix': domain.prefix,
        }) -%}
    {%- endfor -%}
    {{ return(models) }}
{%- endmacro %}


{#- Every feature model with its family and the registry's facts about it, in feature_matrix's
    order: the family entry's fields plus model, domain, prefix. -#}
{% macro feature_models() -%}
    {%- set models = [] -%}
    {%- for family in feature_families() -%}
        {%- for entry in family.models -%}
            {%- set model = family.copy() -%}
            {%- do model.update(entry) -%}
            {%- do model.update({'family': family.name}) -%}
            {%- do models.append(model) -%}
        {%- endfor -%}
    {%- endfor -%}
    {{ return(models) }}
{%- endmacro %}


{#- The column specs of one feature model (for the warm-up test); a model the registry does not
    know is an error that names it. -#}
{% macro feature_model_columns(model_name) -%}
    {%- for model in feature_models() if model.model == model_name -%}
        {{ return(model.columns(model.domain)) }}
    {%- endfor -%}
    {{ exceptions.raise_compiler_error(
        "feature_model_columns: '" ~ model_name ~ "' is not a model of feature_families() (macros/catalog)") }}
{%- endmacro %}


{#- The catalog, evaluated: plain lists and dicts (what python/bqx/catalog.py reads), in
    feature_matrix's column order; targets from target_columns(). -#}
{% macro feature_catalog() -%}
    {%- set features = [] -%}
    {%- for model in feature_models() -%}
        {%- for column in model.columns(model.domain) -%}
            {%- do features.append({
                'model': model.model,
                'column': column.name,
                'matrix_column': model.prefix ~ column.name,
                'family': model.family,
                'domain': model.domain,
                'warmup_bars': column.warmup_bars,
                'null_allowed_when': column.null_allowed_when,
                'laggable': model.laggable,
                'description': column.description,
            }) -%}
        {%- endfor -%}
    {%- endfor -%}
    {{ return({'features': features, 'targets': target_columns()}) }}
{%- endmacro %}
