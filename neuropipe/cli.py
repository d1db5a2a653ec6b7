"""The ``neuropipe`` command line: a thin layer over the package's functions."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path

from neuropipe.config import load_settings
from neuropipe.errors import ConfigurationError, NeuropipeError

logger = logging.getLogger("neuropipe")


def main(argv=None) -> int:
    """Run the ``neuropipe`` command; return its exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    from neuropipe.database import import_datajoint

    import_datajoint()  # it sets its logger's level on import; ours below must come after
    logging.basicConfig(format="%(asctime)s %(name)s %(levelname)s: %(message)s", datefmt="%H:%M:%S",
                        level=logging.WARNING)
    logging.getLogger("neuropipe").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    datajoint_logger = logging.getLogger("datajoint")  # it has a handler of its own
    datajoint_logger.propagate = False
    datajoint_logger.setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    try:
        return args.command(args) or 0
    except NeuropipeError as error:
        print(f"neuropipe: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="neuropipe", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="run the whole chain on a sample (or your) volume")
    demo.add_argument("--source", help="image URI, e.g. file:///data/stack.npz#image (default: synthetic sample)")
    demo.add_argument("--labels", help="expert labels URI, e.g. file:///data/stack.npz#membrane")
    demo.add_argument("--labels-kind", choices=("membrane", "cells"), default="membrane")
    demo.add_argument("--name", help="dataset name prefix (default: the source file's stem)")
    demo.add_argument("--voxel-size", type=float, nargs=3, metavar=("Z", "Y", "X"),
                      help="voxel size in nm, ZYX (default: the source's metadata, else 1 1 1)")
    demo.add_argument("--train-fraction", type=float, default=2 / 3,
                      help="fraction of z planes to train on; the rest are held out (default 2/3)")
    demo.add_argument("--minutes", type=float, help="training time budget (default: 0.5 sample, 2 real data)")
    demo.set_defaults(command=_demo)

    new = commands.add_parser("new", help="write a pipeline module with one step, its test and a notebook")
    new.add_argument("name", help="the module's name, e.g. mylab (writes mylab.py, test_mylab.py, mylab.ipynb)")
    new.add_argument("--dir", default=".", help="where to write them (default: here)")
    new.set_defaults(command=_new)

    cwl = commands.add_parser("cwl", help="CWL tools and workflows as tables (needs the cwl extra)")
    cwl_commands = cwl.add_subparsers(required=True, metavar="ACTION")
    cwl_import = cwl_commands.add_parser("import", help="write the pipeline module of a CWL tool or workflow")
    cwl_import.add_argument("file", help="a CWL v1.0-v1.2 CommandLineTool or Workflow")
    cwl_import.add_argument("-o", "--output", help="the module to write (default: print it)")
    cwl_import.add_argument("--schema", help="the schema's name after the prefix (default: the CWL file's name)")
    cwl_import.set_defaults(command=_cwl_import)

    worker = commands.add_parser("worker", help="populate the pipeline's tables until stopped")
    _add_pipeline_options(worker)
    worker.add_argument("--processes", type=int, default=1,
                        help="CPU worker processes on this machine (may exceed the CPU count for I/O-bound tables)")
    worker.add_argument("--gpus", default="none", metavar="SPEC",
                        help="'all', 'none' or device indices like 0,1: one worker process per GPU")
    _add_worker_options(worker)
    worker.add_argument("--memory-gb", type=float, help="memory this worker offers (default: the host's)")
    worker.set_defaults(command=_worker)

    watch = commands.add_parser("watch", help="register new volumes in a folder or Boss collection as datasets")
    watch.add_argument("target", help="a folder, or bossdb://collection")
    watch.add_argument("--every", type=float, default=60.0, help="seconds between scans (default 60)")
    watch.add_argument("--once", action="store_true", help="scan once and exit")
    watch.add_argument("--settle", type=float, default=10.0,
                       help="take files unchanged for this many seconds (default 10): not half-written")
    watch.add_argument("--voxel-size", type=float, nargs=3, metavar=("Z", "Y", "X"),
                       help="voxel size in nm for sources whose metadata has none (default 1 1 1)")
    watch.set_defaults(command=_watch)

    status = commands.add_parser("status", help="per table: done, pending, running, error; live workers")
    _add_pipeline_options(status)
    status.set_defaults(command=_status)

    errors = commands.add_parser("errors", help="failed jobs and their messages")
    _add_pipeline_options(errors)
    errors.add_argument("--table", help="only tables matching this pattern")
    errors.add_argument("--traceback", action="store_true", help="show each job's traceback")
    errors.set_defaults(command=_errors)

    retry = commands.add_parser("retry", help="send failed jobs back to the queue")
    _add_pipeline_options(retry)
    retry.add_argument("--table", help="only tables matching this pattern")
    retry.add_argument("--key", type=json.loads, help='only this key, as JSON: \'{"dataset": "stack1"}\'')
    retry.set_defaults(command=_retry)

    stale = commands.add_parser("stale", help="rows made by older code or settings, and the rows that depend on them")
    _add_pipeline_options(stale)
    stale.add_argument("--table", help="check only the rows of tables matching this pattern (and what depends on them)")
    stale.add_argument("--recompute", action="store_true", help="delete them (and dependents), queue them again")
    stale.add_argument("--yes", action="store_true", help="with --recompute: do not ask before deleting")
    stale.set_defaults(command=_stale)

    record = commands.add_parser("provenance", help="which code, parameters, worker and time made a table's rows")
    record.add_argument("table", help="the table, e.g. DetectionMetrics")
    record.add_argument("--key", type=json.loads,
                        help='only rows matching this key, as JSON: \'{"dataset": "stack1"}\'')
    record.add_argument("--limit", type=int, default=20, help="rows to show, in key order (default 20)")
    record.add_argument("--pipeline", action="append", metavar="MODULE", help="pipeline module (default: schemas)")
    record.set_defaults(command=_provenance)

    sweep = commands.add_parser("sweep", help="insert the parameter sets of a sweep file (neuropipe's or SABER's)")
    sweep.add_argument("file", help="YAML sweep file (see docs/sweeps.md)")
    sweep.add_argument("--pipeline", action="append", metavar="MODULE", help="pipeline module (default: schemas)")
    sweep.add_argument("--dry-run", action="store_true", help="list the parameter sets without inserting them")
    sweep.add_argument("--sampler", choices=("grid", "random"), help="override the file's sampler")
    sweep.add_argument("--count", type=int, help="random sampler: how many sets (overrides the file)")
    sweep.add_argument("--seed", type=int, help="random sampler: the generator's seed (overrides the file)")
    sweep.set_defaults(command=_sweep)

    scores = commands.add_parser("scores", help="a table's scores joined with their parameters, best first")
    scores.add_argument("table", help="the scores table, e.g. DetectionMetrics")
    scores.add_argument("--metric", required=True, help="the column to rank by, e.g. f1")
    scores.add_argument("--pipeline", action="append", metavar="MODULE", help="pipeline module (default: schemas)")
    scores.add_argument("--csv", help="also write the rows to this CSV file")
    scores.add_argument("--plot", default="scores.png", help="image of the metric against each parameter "
                        "(default scores.png; 'none' for no plot)")
    scores.add_argument("--lower-is-better", action="store_true", default=None,
                        help="rank ascending (default: ascending for metrics named like errors or losses)")
    scores.add_argument("--top", type=int, default=20, help="rows to print (default 20)")
    scores.set_defaults(command=_scores)

    report = commands.add_parser("report", help="write one self-contained HTML report: progress, timeline, "
                                 "resources, errors, scores, images, Neuroglancer links")
    _add_pipeline_options(report)
    report.add_argument("-o", "--output", default="report.html", help="HTML file to write (default report.html)")
    report.add_argument("--port", type=int, default=8765,
                        help="port of `neuropipe view` the Neuroglancer links point at (default 8765)")
    report.set_defaults(command=_report)

    view = commands.add_parser("view", help="serve a dataset's image, membrane map and cells to Neuroglancer")
    view.add_argument("dataset", help="the dataset to serve")
    view.add_argument("--pipeline", action="append", metavar="MODULE", help="pipeline module (default: schemas)")
    view.add_argument("--port", type=int, default=8765, help="port to serve on (default 8765; 0: any free port)")
    view.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1)")
    view.add_argument("--key", type=json.loads, help='only maps and detections matching this key, as JSON: '
                      '\'{"detection_id": "..."}\'')
    view.set_defaults(command=_view, tables=None)

    dashboard = commands.add_parser("dashboard", help="a live web view of the pipeline: graph, jobs, workers, errors")
    dashboard.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    dashboard.add_argument("--host", default="127.0.0.1",
                           help="address to bind (default 127.0.0.1, this machine only)")
    dashboard.add_argument("--pipeline", action="append", metavar="MODULE", help="pipeline module (default: schemas)")
    dashboard.add_argument("--read-only", action="store_true", help="no actions at all (no token made or read)")
    dashboard.set_defaults(command=_dashboard)

    database = commands.add_parser("db", help="the embedded PostgreSQL server: start, stop, status")
    database.add_argument("action", choices=("start", "stop", "status"))
    database.set_defaults(command=_db)
    return parser


def _new(args) -> int:
    from neuropipe import scaffold

    written = scaffold.write(args.name, Path(args.dir))
    print("wrote " + ", ".join(str(path) for path in written))
    print(f"next: python -m pytest {written[1]}   (makes the step against the configured database), "
          f"then open {written[2].name}")
    return 0


def _cwl_import(args) -> int:
    try:
        from neuropipe.cwl import module
    except ImportError as error:
        raise ConfigurationError(f"CWL support needs the cwl extra (pip install 'neuropipe[cwl]'): {error}") from None
    text = module.module_text(args.file, args.output, args.schema)
    if not args.output:
        print(text, end="")
        return 0
    Path(args.output).write_text(text)
    print(f"wrote {args.output}; next: insert the inputs it names, then neuropipe worker --pipeline "
          f"{Path(args.output).stem}")
    return 0


def _dashboard(args) -> int:
    import secrets

    import uvicorn

    from neuropipe.dashboard.app import create_app

    token = None
    if not args.read_only:
        token = load_settings().dashboard_token
        if not token:
            token = secrets.token_urlsafe(24)
            print(f"dashboard token (shown once; actions ask for it): {token}", flush=True)
    mode = "read-only" if token is None else "actions need the token"
    print(f"neuropipe dashboard on http://{args.host}:{args.port}/ ({mode})", flush=True)
    uvicorn.run(create_app(_modules(args), token=token), host=args.host, port=args.port, log_level="warning")
    return 0


def _demo(args) -> int:
    from neuropipe import demo

    settings = load_settings()
    if args.source and not args.labels:
        raise ConfigurationError("demo --source needs --labels too: the membrane model is trained on expert labels.")
    if args.source:
        plan = demo.source_plan(args.source, args.labels, name=args.name, train_fraction=args.train_fraction,
                                voxel_size=args.voxel_size, labels_kind=args.labels_kind,
                                minutes=args.minutes or 2.0)
    else:
        plan = demo.sample_plan(minutes=args.minutes or 0.5)
    results = demo.run_demo(plan, settings)
    print(demo.format_results(results))
    return 1 if results["failed"] else 0


def _add_pipeline_options(parser) -> None:
    parser.add_argument("--pipeline", action="append", metavar="MODULE",
                        help="importable module of tables (repeatable; default: schemas)")
    parser.add_argument("--tables", action="append", metavar="PATTERN",
                        help="only tables whose name matches (repeatable), e.g. 'Membrane*'")


def _add_worker_options(parser) -> None:
    """Add a flag for each :class:`~neuropipe.worker.WorkerOptions` field, with its default and help."""
    from neuropipe.worker import WorkerOptions

    for option in WorkerOptions.flags():
        flag = "--" + option.name.replace("_", "-")
        if "bool" in str(option.type):
            parser.add_argument(f"--no-{flag[2:]}", dest=option.name, action="store_false",
                                help=option.metadata["help"])
            continue
        kind = int if "int" in str(option.type) else float
        parser.add_argument(flag, type=kind, default=option.default, metavar=option.metadata.get("metavar"),
                            help=option.metadata["help"])


def _worker_options(args):
    """Return the :class:`~neuropipe.worker.WorkerOptions` that ``neuropipe worker``'s flags give."""
    from neuropipe.worker import WorkerOptions

    return WorkerOptions.create(**{option.name: getattr(args, option.name) for option in WorkerOptions.flags()})


def _pipeline(args):
    """Connect, bind the registry and the pipeline modules; return the selected tables."""
    from neuropipe.pipeline import pipeline_tables

    return pipeline_tables(_modules(args), args.tables or ())


def _modules(args):
    """Connect, bind the registry and the pipeline modules; return the modules."""
    from neuropipe.database import connect, retrying_declaration
    from neuropipe.pipeline import load_pipeline
    from neuropipe.worker import registry

    settings = load_settings()
    connection = connect(settings)
    retrying_declaration(registry.activate, settings.schema_prefix, connection)
    return load_pipeline(getattr(args, "pipeline", None) or ["schemas"], prefix=settings.schema_prefix)


def _worker(args) -> int:
    from neuropipe.worker import Worker, resources, supervisor
    from neuropipe.worker.failures import keep_trying

    if args.gpus == "pinned":  # a supervisor's child, given one GPU
        gpus = [int(os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0])]
    else:
        try:
            gpus = resources.parse_gpus(args.gpus)
        except ValueError as error:
            raise ConfigurationError(str(error)) from None
        if args.processes != 1 or gpus:
            return supervisor.supervise(supervisor.plan_slots(_child_argv(args), args.processes if not gpus
                                                              or args.processes != 1 else 0, gpus))
    resources.limit_malloc_arenas()
    options = _worker_options(args)
    tables = keep_trying(lambda: _pipeline(args), patience=args.wait_for_database, cap=args.reconnect_cap,
                         what="at start")
    worker = Worker(tables, options, resources.local_resources(gpus, args.memory_gb))
    worker.serve()
    return 0 if worker._signals < 2 else 128 + signal.SIGTERM


def _child_argv(args) -> list[str]:
    """Return the options a supervisor passes on to each worker process."""
    argv = [f"--pipeline={name}" for name in args.pipeline or []]
    argv += [f"--tables={pattern}" for pattern in args.tables or []]
    argv += _worker_options(args).argv()
    return argv + ([f"--memory-gb={args.memory_gb}"] if args.memory_gb is not None else [])


def _watch(args) -> int:
    from neuropipe.database import connect
    from neuropipe.pipeline import load_pipeline
    from neuropipe.watch import watch

    settings = load_settings()
    connect(settings)
    (schemas,) = load_pipeline(["schemas"], prefix=settings.schema_prefix)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    names = watch(args.target, schemas.volume.Dataset, every=args.every, once=args.once, settle=args.settle,
                  voxel_size=args.voxel_size, stop=lambda: bool(stopping))
    print(f"registered {len(names)} dataset(s)" + (f": {', '.join(names)}" if names else ""))
    return 0


def _status(args) -> int:
    from neuropipe.worker import status

    tables = _pipeline(args)
    columns = ("done", "pending", "running", "error", "ignored")
    print(f"{'table':<20}" + "".join(f"{name:>9}" for name in columns) + "  running on")
    for row in status.table_progress(tables):
        print(f"{row['table']:<20}" + "".join(f"{row[name]:>9}" for name in columns) + "  " + " ".join(row["workers"]))
    blocks = status.block_progress(tables)
    if blocks:
        print(f"\n{'blocks of':<20}{'dataset':<24}{'done':>14}{'running':>9}{'error':>9}")
        for row in blocks:
            done = f"{row['done']}/{row['total']}"
            print(f"{row['table']:<20}{row['dataset']:<24}{done:>14}{row['running']:>9}{row['error']:>9}")
    workers = status.live_workers()
    names = {table.full_table_name: table.__name__ for table in tables}  # the current job's table, by class name
    print(f"\n{len(workers)} live worker(s)")
    for worker in workers:
        table = worker["current_table"]
        job = f"{names.get(table, table.split('.')[-1])} {worker['current_key']}" if table else "idle"
        print(f"  {worker['host']}:{worker['pid']} {worker['status']:<8} "
              f"since {worker['started_time']:%Y-%m-%d %H:%M:%S}  heartbeat {worker['heartbeat_age']:.0f} s ago  "
              f"done {worker['jobs_done']} failed {worker['jobs_failed']}  resources {worker['resources']}  now: {job}")
    return 0


def _errors(args) -> int:
    from neuropipe.worker import status

    failed = status.failed_jobs(_pipeline(args), pattern=args.table, tracebacks=args.traceback)
    for job in failed:
        print(f"{job['table']} {_key_text(job['key'])}  "
              f"({job['attempts']} attempt(s), last on {job['worker']} at {job['when']})")
        print(f"  {job['message']}")
        if args.traceback and job["traceback"]:
            print("  " + str(job["traceback"]).replace("\n", "\n  "))
    print(f"{len(failed)} failed job(s)" + ("; `neuropipe retry` re-queues them" if failed else ""))
    return 0


def _retry(args) -> int:
    from neuropipe.worker import status

    count = status.retry(_pipeline(args), pattern=args.table, key=args.key)
    print(f"re-queued {count} failed job(s); workers will take them up")
    return 0


def _stale(args) -> int:
    import fnmatch

    from neuropipe.provenance import stale

    only = (lambda table: fnmatch.fnmatch(table.__name__, args.table)) if args.table else None
    found = [rows for rows in stale.find_stale(_pipeline(args), only=only) if rows.keys]
    for rows in found:
        reasons = ", ".join(f"{count} {reason}" for reason, count in rows.counts().items())
        print(f"{rows.name:<20} {len(rows.keys):>7} stale  ({reasons})")
        for key, reason in list(zip(rows.keys, rows.reasons))[:5]:
            print(f"  {_key_text(key)}  {reason}")
        if len(rows.keys) > 5:
            print(f"  ... and {len(rows.keys) - 5} more")
    total = sum(len(rows.keys) for rows in found)
    print(f"{total} stale row(s)" + ("; `neuropipe stale --recompute` deletes and re-queues them"
                                     if total and not args.recompute else ""))
    if not total or not args.recompute:
        return 0
    if not args.yes and input(f"Delete these {total} row(s), with their part rows, and compute them again? [y/N] "
                              ).strip().lower() not in ("y", "yes"):
        print("nothing deleted")
        return 1
    deleted = stale.recompute(found)
    print("deleted " + ", ".join(f"{count} from {name}" for name, count in deleted.items()) +
          "; queued again for the workers")
    return 0


def _provenance(args) -> int:
    from neuropipe import provenance
    from neuropipe.pipeline import table_classes

    tables = table_classes(_modules(args))
    if args.table not in tables:
        raise ConfigurationError(f"no table {args.table!r} in the pipeline; tables: {', '.join(sorted(tables))}")
    table = tables[args.table]
    query = table & args.key if args.key else table()
    found = provenance.records(query, limit=args.limit)
    current = provenance.code_hash(table)
    for key, record in found:
        print(f"{args.table} {_key_text(key)}")
        print("  " + (_describe_record(record, current) if record else
                      f"{provenance.NO_RECORD}: made outside a neuropipe worker, by one run with --no-provenance, "
                      "or made again since its record was written"))
    total, shown = len(query), len(found)
    recorded = sum(record is not None for _, record in found)
    print(f"{total} row(s)" + (f", {shown} shown" if shown < total else "")
          + f": {recorded} with their record, {shown - recorded} with {provenance.NO_RECORD}")
    return 0


def _describe_record(record: dict, current_code: str) -> str:
    commit = record["git_commit"][:10] or "no git commit"
    freshness = "current" if record["code_hash"] == current_code else "changed since"
    code = (f"code {record['code_hash'][:12]} ({freshness}; "
            f"neuropipe {record['neuropipe_version']}, {commit}{' + local changes' if record['git_dirty'] else ''})")
    made = (f"made by {record['host']}:{record['pid']} from {record['start_time']:%Y-%m-%d %H:%M:%S} UTC "
            f"in {record['duration']:.2f} s (CPU {record['cpu_seconds']:.2f} s, peak {record['peak_rss_mb']:.0f} MB)")
    quotes = "`\""  # MySQL's and PostgreSQL's identifier quotes around the table name
    inputs = ", ".join(f"{entry['table'].split('.')[-1].strip(quotes)} {json.dumps(entry['key'])}"
                       for entry in record["inputs"])
    return f"{code}\n  settings {record['params_hash'][:12]}; inputs {inputs or '-'}\n  {made}"


def _sweep(args) -> int:
    import yaml

    from neuropipe import sweeps

    try:
        with open(args.file) as handle:
            document = yaml.safe_load(handle)
    except (OSError, yaml.YAMLError) as error:
        raise ConfigurationError(f"cannot read sweep file {args.file}: {error}") from None
    plan = sweeps.read_sweep_file(document, sampler=args.sampler, count=args.count, seed=args.seed)
    if args.dry_run:
        for sweep in plan:
            for params in sweep.parameter_sets():
                print(f"{sweep.table} {json.dumps(params, sort_keys=True)}")
        return 0
    for row in sweeps.insert_sweeps(plan, _modules(args)):
        print(f"{row['table']}: {row['sets']} parameter set(s), {row['new']} new; workers compute what they imply")
    return 0


def _scores(args) -> int:
    from neuropipe import sweeps
    from neuropipe.pipeline import table_classes

    modules = _modules(args)
    tables = table_classes(modules)
    if args.table not in tables:
        raise ConfigurationError(f"no table {args.table!r} in the pipeline; tables: {', '.join(sorted(tables))}")
    rows, columns = sweeps.score_rows(tables[args.table], args.metric, modules, lower_is_better=args.lower_is_better)
    shown = [name for name in rows[0] if name != args.metric and name not in columns] if rows else []
    header = [args.metric, *columns, *shown]
    print("  ".join(f"{name:>12}" for name in header))
    for row in rows[:args.top]:
        print("  ".join(f"{_short(row.get(name)):>12}" for name in header))
    print(f"{len(rows)} row(s)" + (f", {len(rows) - args.top} not shown" if len(rows) > args.top else ""))
    if args.csv:
        sweeps.write_csv(rows, args.csv)
        print(f"wrote {args.csv}")
    if rows and args.plot != "none":
        plotted = sweeps.plot_scores(rows, args.metric, columns, args.plot)
        print(f"plotted {args.metric} against {', '.join(plotted) or 'nothing'}: {args.plot}")
    return 0


def _short(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)[:24]


def _report(args) -> int:
    from neuropipe.reports import write_report

    path = write_report(args.output, _pipeline(args), port=args.port)
    print(f"wrote {path}")
    return 0


def _view(args) -> int:
    from neuropipe.reports import viewer

    tables = _pipeline(args)
    return viewer.view(args.dataset, tables, viewer.cache_folder(load_settings()), host=args.host, port=args.port,
                       restriction=args.key)


def _db(args) -> int:
    from neuropipe.embedded import EmbeddedPostgres

    server = EmbeddedPostgres()
    if args.action == "start":
        info = server.ensure_running()
        print(f"embedded PostgreSQL running on {info.host}:{info.port} (user {info.user})")
    elif args.action == "stop":
        server.stop()
        print("embedded PostgreSQL stopped")
    else:
        state = server.status()
        if state["running"]:
            print(f"embedded PostgreSQL running on 127.0.0.1:{state['port']} (pid {state['pid']}), "
                  f"data in {state['data_dir']}")
        else:
            print(f"embedded PostgreSQL not running; data in {state['data_dir']}"
                  + ("" if (Path(state["data_dir"]) / "PG_VERSION").is_file() else " (not created yet)")
                  + "; `neuropipe db start` starts it")
    return 0


if __name__ == "__main__":
    sys.exit(main())


def _key_text(key) -> str:
    """Return a key as the JSON that ``--key`` takes back."""
    return json.dumps(key, default=str) if isinstance(key, dict) else str(key)
