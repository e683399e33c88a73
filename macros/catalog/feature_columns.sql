{#-
    What a family's column-spec macro (`<family>_columns(domain)`, beside its maths in
    macros/features/) returns: one dict per column of the model, in the model's column order,
    built by feature_column() below. It is the one source of the catalog (python/bqx/catalog.py),
    of the generated model YAML (`bqx docs generate-yaml`) and of the warm-up test
    (macros/tests/):
      name               the model's column
      warmup_bars        the column is NULL on exactly the first warmup_bars bars of every pair
                         (computed from the vars: the series' own warm-up plus the metric's)
      null_allowed_when  SQL predicate over the model's columns (qualified by the model's name
                         where a correlated subquery needs it) on which a NULL after the warm-up is
                         allowed; none = never NULL after the warm-up
      description        the metric's template filled for this column, then the warm-up, NULL and
                         precision sentences (the YAML's and `dbt docs`' description)
-#}

{#- The series the models of a domain read: its column, its own warm-up (bars before its first
    value) and how the docs name it. domain: 'rate', 'bqx', or none (single-domain families). -#}
{% macro feature_series(domain) -%}
    {%- if domain == 'bqx' -%}
        {%- set window = var('bqx_series_window') | int -%}
        {{ return({
            'column': 'bqx_w' ~ window,
            'warmup': window,
            'label': 'the BQX series bqx_w' ~ window,
            'domain_note': 'BQX domain: the series bqx_w' ~ window ~ ' of model bqx (var bqx_series_window)',
        }) }}
    {%- else -%}
        {{ return({'column': 'close_idx', 'warmup': 0, 'label': 'close_idx', 'domain_note': none}) }}
    {%- endif -%}
{%- endmacro %}


{#- One column's spec (see the top of this file).
    template: the metric's description, with {placeholders} filled from `values` (str.format);
      line breaks and runs of spaces are folded, so templates can be wrapped in the macro file.
    warmup: the metric's own warm-up in bars, on top of the series' (series.warmup);
      warmup_rule says how it follows from the vars (e.g. 'W − 1'), for the docs.
    null_when / null_allowed_when: when a NULL after the warm-up is allowed, in words and in SQL
      (both or neither); never_null_because: why it cannot be NULL otherwise (optional).
    precision: the column's type and how close it is to its reference (tests). -#}
{% macro feature_column(
    name, template, values={}, warmup=0, series=none, warmup_rule=none,
    null_when=none, null_allowed_when=none, never_null_because=none, precision=none
) -%}
    {%- if (null_when is none) != (null_allowed_when is none) -%}
        {{ exceptions.raise_compiler_error(
            "feature_column " ~ name ~ ": null_when and null_allowed_when go together") }}
    {%- endif -%}
    {%- set series_warmup = series.warmup if series else 0 -%}
    {%- set total = series_warmup + warmup -%}
    {%- set rule = ' (' ~ warmup_rule ~ ')' if warmup_rule else '' -%}
    {%- set parts = [template.format(**values)] -%}
    {%- if series and series.domain_note -%}
        {%- do parts.append(series.domain_note ~ '.') -%}
    {%- endif -%}
    {%- set first = ' bar' if total == 1 else ' ' ~ total ~ ' bars' -%}
    {%- if total == 0 -%}
        {%- do parts.append('No warm-up: defined from the pair\'s first bar.') -%}
    {%- elif series_warmup > 0 -%}
        {%- do parts.append(
            'Warm-up ' ~ total ~ ' bars: NULL on the pair\'s first' ~ first ~ ', the series\' own warm-up of '
            ~ series_warmup ~ ' (var bqx_series_window) plus ' ~ warmup ~ rule ~ '; the first value is at the pair\'s bar '
            ~ (total + 1) ~ '.') -%}
    {%- else -%}
        {%- do parts.append(
            'Warm-up ' ~ total ~ (' bar' if total == 1 else ' bars') ~ rule ~ ': NULL on the pair\'s first' ~ first
            ~ '; the first value is at its bar ' ~ (total + 1) ~ '.') -%}
    {%- endif -%}
    {%- if null_when is not none -%}
        {%- do parts.append('NULL after the warm-up only when ' ~ null_when ~ '.') -%}
    {%- elif never_null_because -%}
        {%- do parts.append('Never NULL after the warm-up (' ~ never_null_because ~ ').') -%}
    {%- else -%}
        {%- do parts.append('Never NULL after the warm-up.') -%}
    {%- endif -%}
    {%- if precision -%}
        {%- do parts.append('Precision: ' ~ precision ~ '.') -%}
    {%- endif -%}
    {{ return({
        'name': name,
        'warmup_bars': total,
        'null_allowed_when': null_allowed_when,
        'description': (parts | join(' ')).split() | join(' '),
    }) }}
{%- endmacro %}


{#- The specs of a family whose columns carry a window (`<metric>_w<W>`): each metric of `metrics`
    for each W of `windows` (windows outer, metrics inner: the models' column order). A metric:
      name                the column's name pattern, e.g. 'reg_a_w{w}'
      template            its description template
      warmup_offset       its own warm-up is W + warmup_offset bars (default -1: W − 1)
      null_when, null_allowed_when, never_null_because   as feature_column (patterns too)
    The patterns see w (the window), w1 (w − 1), y (the series' column), series (its name in the
    docs) and `values`. -#}
{% macro windowed_columns(metrics, windows, series, precision, values={}) -%}
    {%- set columns = [] -%}
    {%- for window in windows | map('int') -%}
        {%- set filled = {'w': window, 'w1': window - 1, 'y': series.column, 'series': series.label} -%}
        {%- do filled.update(values) -%}
        {%- for metric in metrics -%}
            {%- set offset = metric.get('warmup_offset', -1) -%}
            {%- do columns.append(feature_column(
                metric.name.format(**filled),
                metric.template,
                values=filled,
                warmup=window + offset,
                series=series,
                warmup_rule='W' ~ (' − ' ~ (-offset) if offset < 0 else (' + ' ~ offset if offset > 0 else '')),
                null_when=metric.null_when.format(**filled) if 'null_when' in metric else none,
                null_allowed_when=metric.null_allowed_when.format(**filled) if 'null_when' in metric else none,
                never_null_because=metric.get('never_null_because'),
                precision=precision,
            )) -%}
        {%- endfor -%}
    {%- endfor -%}
    {{ return(columns) }}
{%- endmacro %}
