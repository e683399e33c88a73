{#-
    The schema `build_state`: what each model has built, which changes it has consumed, and the
    build log `bqx status` reads (small tables and index lookups, never a scan of the features).

      model_pairs  per model and pair: the snapshot its last successful build read its input
                   with (a change, a row of raw.m1_changes or of rewrites, is consumed iff its
                   xid is visible in that snapshot), the minutes it rewrote, its last built
                   minute against its input's, the rows it wrote, and when.
      rewrites     per model, pair and build: the range of minutes the build rewrote, with the
                   writing transaction; the models downstream consume these as m1_index
                   consumes raw.m1_changes (a rewrite is only visible once its rows are).
      model_vars   the vars each model was built with, so a changed baseline_date (or any var
                   that changes values without changing columns) stops an incremental build.
      runs         one row per dbt invocation: command, start, end, status.
      model_runs   one row per model built: start, end, pairs recomputed, rows written.
      audits       one row per `bqx audit`: snapshot, what it compared, the worst difference.
      audited_pairs per model and pair: the model's consumed snapshot when an audit last checked
                   the pair's changes (the changes it had consumed by then are audited; a pair
                   the audit skipped, its changes not yet consumed, keeps its older snapshot, so
                   its changes are checked by the first audit after a build consumed them).
    Created idempotently by on-run-start (create_build_state); `bqx audit` writes audits and
    audited_pairs, `bqx status` only reads.
-#}
{% macro create_build_state() -%}
create schema if not exists build_state;
create table if not exists build_state.model_pairs (
    model             text        not null,
    pair              text        not null,
    consumed_snapshot pg_snapshot not null,
    rewrote_from_ts   timestamptz,
    rewrote_to_ts     timestamptz,
    last_built_ts     timestamptz,
    input_last_ts     timestamptz,
    rows_written      bigint      not null default 0,
    invocation_id     text,
    built_at          timestamptz not null default clock_timestamp(),
    baseline_ts       timestamptz,
    baseline_rate     double precision,
    primary key (model, pair)
);
create table if not exists build_state.rewrites (
    model   text        not null,
    pair    text        not null,
    from_ts timestamptz not null,
    to_ts   timestamptz not null,
    xid     xid8        not null default pg_current_xact_id()
);
create index if not exists rewrites_model_pair_xid on build_state.rewrites (model, pair, xid);
create table if not exists build_state.model_vars (
    model      text primary key,
    vars       jsonb       not null,
    built_at   timestamptz not null default clock_timestamp()
);
create table if not exists build_state.runs (
    invocation_id    text primary key,
    command          text,
    full_refresh     boolean,
    models_selected  integer,
    started_at       timestamptz not null default clock_timestamp(),
    finished_at      timestamptz,
    status           text        not null default 'running',
    backend_pid      integer     not null default pg_backend_pid(),
    application_name text        default current_setting('application_name'),
    results          jsonb
);
create table if not exists build_state.model_runs (
    invocation_id    text        not null,
    model            text        not null,
    started_at       timestamptz not null,
    finished_at      timestamptz not null default clock_timestamp(),
    full_refresh     boolean     not null,
    pairs_recomputed integer     not null,
    rows_written     bigint      not null,
    primary key (invocation_id, model)
);
create table if not exists build_state.audits (
    audit_id          bigint generated always as identity primary key,
    started_at        timestamptz not null,
    finished_at       timestamptz not null default clock_timestamp(),
    audit_snapshot    pg_snapshot not null,
    sample_per_pair   integer     not null,
    seed              bigint      not null,
    full_audit        boolean     not null,
    rows_compared     bigint      not null,
    values_compared   bigint      not null,
    mismatches        bigint      not null,
    passed            boolean     not null,
    report            jsonb       not null
);
create table if not exists build_state.audited_pairs (
    model             text        not null,
    pair              text        not null,
    audited_snapshot  pg_snapshot not null,
    audit_id          bigint      not null,
    primary key (model, pair)
)
{%- endmacro %}


{#- on-run-start: the run's row in build_state.runs (committed before the first model). -#}
{% macro record_run_start() -%}
{%- set models = [] -%}
{#- the selected models that log their builds (incremental: prepare_increment/record_increment) -#}
{%- for resource in (selected_resources if selected_resources is defined else []) -%}
    {%- set node = graph.nodes.get(resource) if resource.startswith('model.') else none -%}
    {%- if node is not none and node.config.materialized == 'incremental' -%}
        {%- do models.append(resource) -%}
    {%- endif -%}
{%- endfor -%}
insert into build_state.runs (invocation_id, command, full_refresh, models_selected)
values (
    '{{ invocation_id }}',
    '{{ flags.WHICH }}',
    {{ 'true' if flags.FULL_REFRESH else 'false' }},
    {{ models | length }}
)
on conflict (invocation_id) do nothing
{%- endmacro %}


{#- on-run-end: the run's status and per-node results, and the consumed rewrites pruned
    (a rewrite visible in the snapshot of every model that reads it is no longer needed). -#}
{% macro record_run_end() -%}
{%- set summary = [] -%}
{%- set failed = [] -%}
{%- for result in results -%}
    {%- do summary.append({
        'node': result.node.unique_id,
        'status': result.status | string,
        'seconds': result.execution_time,
        'rows': (result.adapter_response or {}).get('rows_affected'),
        'message': (result.message or '') | string | truncate(300),
    }) -%}
    {%- if (result.status | string) in ('error', 'fail', 'runtime error', 'skipped') -%}
        {%- do failed.append(result.node.unique_id) -%}
    {%- endif -%}
{%- endfor -%}
update build_state.runs
set
    finished_at = clock_timestamp(),
    status = '{{ "failed" if failed else "success" }}',
    results = $results${{ tojson(summary) }}$results$::jsonb
where invocation_id = '{{ invocation_id }}';
delete from build_state.rewrites as consumed
where consumed.xid < (
    select min(pg_snapshot_xmin(readers.consumed_snapshot))
    from build_state.model_pairs as readers
);
{{ prune_consumed_changes() }}
{%- endmacro %}


{#-
    raw.m1_changes pruned of the changes nothing needs any more: a change is deleted when its
    transaction is older than the oldest snapshot any model built any pair with (xid below that
    snapshot's xmin: visible in every model's snapshot of every pair, so m1_index has consumed it
    and every model downstream has read the m1_index rows it rewrote) and older than the last
    audit's snapshot (`bqx audit` checks the minutes changed since the last audit: a change it has
    not seen stays; no audit yet keeps everything). A model, or a pair, not built since keeps its
    old snapshot and so keeps every change after it. A role without the right to delete from the
    log prunes nothing (a notice). Run at the end of every dbt run/build
    (on-run-end), in its own statement: a build killed before it prunes nothing, and since these
    bounds only move forward with committed state, pruning late never loses a change.
-#}
{% macro prune_consumed_changes() -%}
do $prune$
begin
    if to_regclass('raw.m1_changes') is not null then
        delete from raw.m1_changes as consumed
        where
            consumed.xid < (
                select min(pg_snapshot_xmin(readers.consumed_snapshot))
                from build_state.model_pairs as readers
            )
            and consumed.xid < (
                select pg_snapshot_xmin(audited.audit_snapshot)
                from build_state.audits as audited
                order by audited.audit_id desc
                limit 1
            )
            -- and every model and pair an audit has checked has seen it (a pair skipped by the
            -- last audit, its changes then not consumed, keeps them until an audit checks them)
            and not exists (
                select from build_state.audited_pairs as audited_pair
                where consumed.xid >= pg_snapshot_xmin(audited_pair.audited_snapshot)
            );
    end if;
exception when insufficient_privilege then
    -- a dbt role that may not delete from the change log (a server where another role owns raw):
    -- the log is kept as it was, the build is not failed for it
    raise notice 'raw.m1_changes not pruned: % may not delete from it', current_user;
end
$prune$
{%- endmacro %}


{#- on-run-start: partitions of raw.m1_bars made by hand get the change-log triggers (their
    rows are recorded as changed); a no-op before the first `bqx load`. -#}
{% macro ensure_change_triggers() -%}
do $ensure$
begin
    if to_regprocedure('raw.ensure_change_triggers()') is not null then
        perform raw.ensure_change_triggers();
    end if;
end
$ensure$
{%- endmacro %}


{#-
    The writer lock (python/bqx/writer_lock.py): `bqx build` and `bqx load` hold the advisory
    lock (classid, objid) = (writer_lock_keys()) exclusively for their whole run, on a
    connection of their own. Each model of a plain `dbt run` takes it shared for its
    transaction: it waits while a `bqx load` or a `bqx build` runs, and a load waits for the
    model being written to commit. The models of `bqx build`'s own dbt skip it (the session
    setting bqx.writer_pid, which bqx build sets through PGOPTIONS, names the build's lock
    connection, which holds it; a var would force dbt to re-parse the project on every build). Interleaving at model
    boundaries is harmless: each model consumes exactly the changes its snapshot saw.
-#}
{% macro writer_lock_keys() -%}
    {{ return([42817, 1]) }}
{%- endmacro %}


{% macro writer_lock_shared() -%}
{%- set keys = writer_lock_keys() -%}
select pg_advisory_xact_lock_shared({{ keys[0] }}, {{ keys[1] }})
where not exists (
    select from pg_catalog.pg_locks as held
    where
        held.locktype = 'advisory' and held.classid = {{ keys[0] }} and held.objid = {{ keys[1] }}
        and held.objsubid = 2 and held.granted and held.mode = 'ExclusiveLock'
        and held.pid = coalesce(nullif(current_setting('bqx.writer_pid', true), '')::integer, -1)
)
{%- endmacro %}


{#- A model's pre-hook: the writer lock shared, then its own lock (one writer per model). -#}
{% macro model_locks() -%}
{{ writer_lock_shared() }};
select pg_advisory_xact_lock(hashtext('bqx.model {{ this }}'))
{%- endmacro %}


{#- Pre-hook of every model, in its transaction: a table built in its own transaction skips the WAL
    (wal_level = minimal) and is fsynced at commit, where dbt waited ~0.8 s per model for a 0.9 GB
    table (28 pairs x 3 months) while the kernel had written little of it; asking for write-back
    every 2 MB as the backend writes, the commit took 0.09 s and the build no longer. Per model
    transaction (`set local`), not for the server: the data tests right after a build set hint
    bits on every page they read, and with the same write-back they ran 15-27% slower. -#}
{% macro model_write_back() -%}
set local backend_flush_after = '2MB'
{%- endmacro %}
