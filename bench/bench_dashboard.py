"""Server time and size of every dashboard view with a million jobs in a table and a hundred workers.

Issue #33 (scale): with 1,000,000 job rows in one table and 100 registered workers, each view's
server time stays under 1 s, and the pages do not grow with the job count (paged, aggregated
on the server).

The toy pipeline is declared in fresh schemas with the worker registry beside it, and filled
on the server, one ``INSERT ... SELECT`` per table (``generate_series`` on PostgreSQL,
MariaDB's sequence engine), not row by row:

- ``Item``: ``--jobs`` keys; ``Square``'s job table one job per key: 90% ``success``, 8.8%
  ``pending``, 1% ``error`` (a message and a traceback), 0.1% ``reserved``, 0.1% ``ignore``,
  spread over the workers' hosts and pids; queued as ``refresh()`` queues them (in batches of
  1,000 keys that share a created time, one batch every 500 s), run a job every half second;
- ``Square`` a row per successful job, each with its provenance record (the sidecar, with the
  row ids that make the records valid);
- the registry: ``--workers`` workers (80% running, 10% lost, 10% stopped) and two failed
  attempts per failed job.

Each view is timed ``--repeat`` times after one untimed call (the first reads headings; its time
is printed apart): the data functions of :mod:`neuropipe.dashboard.data`
and, where :mod:`neuropipe.dashboard.app` can be imported, the pages through Starlette's test
client (in process: the server's time, no network).  Sizes: the JSON of a data function's
result, the body of a page.  The same runs on ``--small`` jobs (10,000) first, so the sizes
of both show whether a page grows with the job count.

    python bench/bench_dashboard.py [--backend postgresql|mysql] [--jobs 1000000] [--small 10000]
                                    [--workers 100] [--repeat 3]

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path
from urllib.parse import quote as url_quote

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "support"))
sys.path.insert(0, str(ROOT / "bench"))

import toy_pipeline  # noqa: E402
from overhead import settings_for, toy_schema  # noqa: E402

import neuropipe  # noqa: E402
from neuropipe.dashboard import data  # noqa: E402
from neuropipe.provenance import Sidecar, code_hash  # noqa: E402
from neuropipe.worker import registry  # noqa: E402

LIMIT_S = 1.0
# Square's jobs by ``item % 1000``: [0, 10) error, 10 reserved, 11 ignore, [12, 100) pending, the rest success
STATUS = ("CASE WHEN MOD(i, 1000) < 10 THEN 'error' WHEN MOD(i, 1000) = 10 THEN 'reserved' "
          "WHEN MOD(i, 1000) = 11 THEN 'ignore' WHEN MOD(i, 1000) < 100 THEN 'pending' ELSE 'success' END")
ERROR_ITEM = 7  # a failed job (two failed attempts in the registry)
DONE_ITEM = 500  # a successful job (a row and its provenance record)
TRACEBACK = "".join(f'  File "/lab/pipeline/steps.py", line {n}, in step_{n}\n    result = step_{n + 1}(key)\n'
                    for n in range(30)) + "ValueError: the item is unlucky\n"


class Server:
    """The SQL that differs between the two servers, for the bench's ``INSERT ... SELECT`` statements.

    Parameters
    ----------
    connection : datajoint.Connection
        The connection the toy tables are bound to.
    """

    def __init__(self, connection):
        self.connection = connection
        self.postgres = "postgres" in type(connection.adapter).__name__.lower()
        self.quote = connection.adapter.quote_identifier

    def series(self, database: str, count: int) -> str:
        """Return a derived table ``s`` of one column ``i``, the integers 1 .. ``count``."""
        if self.postgres:
            return f"(SELECT generate_series(1, {count}) AS i) AS s"
        return f"(SELECT seq AS i FROM {self.quote(database)}.seq_1_to_{count}) AS s"

    def ago(self, seconds: str) -> str:
        """Return the server's time now less ``seconds`` (an SQL expression), as a ``datetime``."""
        if self.postgres:
            return f"(LOCALTIMESTAMP(3) - make_interval(secs => {seconds}))"
        return f"(NOW(3) - INTERVAL ROUND(({seconds}) * 1000000) MICROSECOND)"

    def div(self, left: str, right: int) -> str:
        """Return the integer quotient ``left / right``."""
        return f"(({left}) / {right})" if self.postgres else f"(({left}) DIV {right})"

    def insert_select(self, table: str, columns: dict, source: str, args=()) -> int:
        """Insert into ``table`` the rows of ``SELECT <columns' expressions> FROM source``; return how many.

        On PostgreSQL each expression is cast to its column's type (enums, json and booleans
        take no text without one).
        """
        expressions = list(columns.values())
        if self.postgres:
            types = dict(self.connection.query(
                "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped", args=(table,)).fetchall())
            expressions = [f"CAST({expression} AS {types[name]})" for name, expression in columns.items()]
        names = ", ".join(self.quote(name) for name in columns)
        return self.connection.query(f"INSERT INTO {table} ({names}) SELECT {', '.join(expressions)} FROM {source}",
                                     args=args).rowcount

    def square(self, column: str) -> str:
        """Return ``column`` squared, computed in 64 bits (MariaDB's integer arithmetic is 64-bit already)."""
        return f"CAST({column} AS BIGINT) * {column}" if self.postgres else f"{column} * {column}"

    def analyze(self, table: str) -> None:
        """Bring the planner's statistics of ``table`` up to date (and PostgreSQL's visibility map)."""
        self.connection.query(f"VACUUM ANALYZE {table}" if self.postgres else f"ANALYZE TABLE {table}")


def worker_host(server: Server, worker: str) -> str:
    """Return the SQL of the host of worker number ``worker`` (four workers a host)."""
    return f"CONCAT('node-', {server.div(worker, 4)})"


def fill(tables, jobs: int, workers: int) -> dict:
    """Fill the toy tables and the registry as the module docstring says; return seconds per step."""
    connection = tables.Square.connection
    server = Server(connection)
    seconds, start = {}, time.perf_counter()
    square, job_table = tables.Square, tables.Square().jobs
    sidecar = Sidecar(square).ensure().mark_target()
    for cls in (tables.Square, tables.GpuSquare, tables.Flaky, tables.Gated, tables.Busy):
        if not cls().jobs.is_declared:
            cls().jobs.declare()
    stack = error_stack(job_table)
    version = neuropipe.__version__
    server.insert_select(tables.Item.full_table_name, {"item": "i"}, server.series(tables.Item.database, jobs))
    seconds["declare+items"] = time.perf_counter() - start
    worker = f"MOD(i, {workers})"
    queued = f"({server.div(f'{jobs} - i', 1000)} * 500 + 600)"  # seconds ago; newer keys later
    started = f"(({jobs} - i) * 0.5 + 60)"  # after its batch was queued
    duration = "(0.5 + MOD(i, 97) / 10.0)"
    finished = f"{STATUS} IN ('success', 'error')"
    start = time.perf_counter()
    server.insert_select(job_table.full_table_name, {
        "item": "i", "status": STATUS, "priority": str(connection._config.jobs.default_priority),
        "created_time": server.ago(queued), "scheduled_time": server.ago(queued),
        "reserved_time": f"CASE WHEN {STATUS} IN ('pending', 'ignore') THEN NULL ELSE {server.ago(started)} END",
        "completed_time": f"CASE WHEN {finished} THEN {server.ago(f'{started} - {duration}')} END",
        "duration": f"CASE WHEN {finished} THEN {duration} END",
        "error_message": f"CASE WHEN {STATUS} = 'error' THEN CONCAT('ValueError: item ', i, ' is unlucky') "
                         f"ELSE '' END",
        "error_stack": f"CASE WHEN {STATUS} = 'error' THEN %s END",
        "user": "'bench'", "host": f"CASE WHEN {STATUS} IN ('pending', 'ignore') THEN '' "
                                   f"ELSE {worker_host(server, worker)} END",
        "pid": f"CASE WHEN {STATUS} IN ('pending', 'ignore') THEN 0 ELSE 10000 + {worker} END",
        "connection_id": "0", "version": f"'{version}'"}, server.series(square.database, jobs), args=(stack,))
    seconds["jobs"] = time.perf_counter() - start
    start = time.perf_counter()
    done = f"{job_table.full_table_name} WHERE status = 'success'"
    server.insert_select(square.full_table_name, {
        "item": "item", "square": server.square("item"), "made_by_pid": "pid",
        "_job_start_time": "reserved_time", "_job_duration": "duration", "_job_version": "version",
        "_row_id": "MD5(CONCAT('row-', item))"}, done)
    seconds["rows"] = time.perf_counter() - start
    start = time.perf_counter()
    server.insert_select(sidecar.full_table_name, {
        "item": "item", "row_id": "MD5(CONCAT('row-', item))", "code_hash": f"'{code_hash(square)}'",
        "neuropipe_version": f"'{version}'", "git_commit": "''", "git_dirty": "FALSE", "python": "'3.11.9'",
        "params_hash": "MD5('no parameters')",
        "inputs": f"CONCAT('[{{\"table\": \"{tables.Item.__name__}\", \"key\": {{\"item\": ', item, '}}}}]')",
        "worker_id": f"MD5(CONCAT('worker-', MOD(item, {workers})))", "host": "host", "pid": "pid",
        "start_time": "reserved_time", "end_time": "completed_time", "duration": "duration",
        "cpu_seconds": "duration * 0.9", "peak_rss_mb": "100 + MOD(item, 500)", "peak_gpu_mb": "NULL"}, done)
    seconds["records"] = time.perf_counter() - start
    start = time.perf_counter()
    register_workers(tables, workers)
    server.insert_select(registry.Failure.full_table_name, {
        "table_name": "%s", "key_hash": "MD5(CONCAT('{\"item\": ', item, '}'))",
        "attempt": "attempt", "job_key": "CONCAT('{\"item\": ', item, '}')",
        "worker_id": f"MD5(CONCAT('worker-', MOD(item, {workers})))",
        "failed_time": "completed_time", "kind": "CASE WHEN attempt = 1 THEN 'transient' ELSE 'permanent' END",
        "error_message": "error_message", "cleared": "FALSE"},
        f"{job_table.full_table_name} CROSS JOIN (SELECT 1 AS attempt UNION ALL SELECT 2) AS a "
        f"WHERE status = 'error'", args=(square.full_table_name,))
    seconds["registry"] = time.perf_counter() - start
    start = time.perf_counter()
    for table in (tables.Item.full_table_name, job_table.full_table_name, square.full_table_name,
                  sidecar.full_table_name, registry.Worker.full_table_name, registry.Failure.full_table_name):
        server.analyze(table)
    seconds["analyze"] = time.perf_counter() - start
    return seconds


def error_stack(job_table) -> bytes:
    """Return a traceback as DataJoint stores it in ``error_stack`` (written through DataJoint, read raw)."""
    job_table.insert1({"item": 0, "status": "pending", "priority": 5})
    job_table.error({"item": 0}, "ValueError: the item is unlucky", TRACEBACK)
    quote = job_table.connection.adapter.quote_identifier
    stored = job_table.connection.query(
        f"SELECT {quote('error_stack')} FROM {job_table.full_table_name} WHERE {quote('item')} = 0").fetchone()[0]
    (job_table & {"item": 0}).delete_quick()
    return bytes(stored)


def register_workers(tables, workers: int) -> None:
    """Register ``workers`` workers: 80% running (one job each), 10% lost, 10% stopped."""
    now = registry.server_now(registry.Worker.connection)
    rows = []
    for number in range(workers):
        kind = "running" if number % 10 < 8 else "lost" if number % 10 == 8 else "stopped"
        silent = {"running": 1, "lost": 600, "stopped": 3600}[kind]
        running = kind == "running"
        rows.append(dict(
            worker_id=hashlib.md5(f"worker-{number}".encode()).hexdigest(), host=f"node-{number // 4}",
            pid=10000 + number, status=kind, started_time=now - datetime.timedelta(seconds=86400 + 60 * number),
            heartbeat_time=now - datetime.timedelta(seconds=silent), heartbeat_seconds=10.0,
            resources={"gpus": [number % 4] if number % 2 else [], "memory_gb": 64, "cpus": 16},
            tables=tables.Square.full_table_name, current_table=tables.Square.full_table_name if running else "",
            current_key={"item": 1000 * number + 10} if running else None, jobs_done=9000 + number,
            jobs_failed=number, version=neuropipe.__version__))
    registry.Worker.insert(rows)


def last_page(jobs: int) -> int:
    """Return the number of the last page of ``jobs`` jobs (pages count from 0)."""
    return max(0, -(-jobs // data.PAGE_SIZE) - 1)


def data_views(tables, jobs: int) -> dict:
    """Return the data functions' calls, by view name."""
    classes = [tables.Item, tables.Square, tables.GpuSquare, tables.Flaky, tables.Gated, tables.Busy]
    computed = classes[1:]
    square = tables.Square
    return {
        "graph": lambda: data.graph(classes),
        "jobs_page": lambda: data.jobs_page(square),
        "jobs_page_error_p1": lambda: data.jobs_page(square, status_filter="error", page=1),
        "jobs_page_pending": lambda: data.jobs_page(square, status_filter="pending"),
        "jobs_page_last": lambda: data.jobs_page(square, page=last_page(jobs)),
        "jobs_page_key": lambda: data.jobs_page(square, key={"item": DONE_ITEM}),
        "jobs_page_worker": lambda: data.jobs_page(square, worker="node-1:10005"),
        "job_detail_error": lambda: data.job_detail(square, {"item": ERROR_ITEM}),
        "job_detail_done": lambda: data.job_detail(square, {"item": DONE_ITEM}),
        "workers": lambda: data.workers(),
        "timeline": lambda: data.timeline(computed),
        "costs": lambda: data.costs(computed),
        "failed": lambda: data.failed(computed),
    }


#: The pages and the fragments they poll, by view name: their paths (``{error}`` and ``{done}`` become keys
#: of jobs, ``{last}`` the last page of all jobs).
ROUTES = {
    "http /": "/",
    "http /fragment/graph": "/fragment/graph",
    "http /table": "/table/Square",
    "http /fragment/table": "/fragment/table/Square",
    "http /table?status=error&page=3": "/table/Square?status=error&page=3",
    "http /table?page=last": "/table/Square?page={last}",
    "http /table?k.item=": "/table/Square?k.item={done_item}",
    "http /table?worker=": "/table/Square?worker=node-1:10005",
    "http /job (error)": "/job/Square?key={error}",
    "http /job (done)": "/job/Square?key={done}",
    "http /workers": "/workers",
    "http /fragment/workers": "/fragment/workers",
    "http /timeline": "/timeline",
    "http /fragment/timeline": "/fragment/timeline",
}


def http_views(tables, jobs: int) -> dict:
    """Return GETs of :data:`ROUTES` through Starlette's test client, or nothing where there is no app yet."""
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient` is deprecated")
    try:
        from starlette.testclient import TestClient

        from neuropipe.dashboard.app import create_app
    except ImportError as error:
        print(f"pages skipped: neuropipe.dashboard.app cannot be imported ({error})")
        return {}
    vars(toy_pipeline).update(vars(tables))  # bound as the module binds itself under TOY_SCHEMA
    client = TestClient(create_app([toy_pipeline]))
    keys = {name: url_quote(json.dumps({"item": item})) for name, item in (("error", ERROR_ITEM), ("done", DONE_ITEM))}
    keys.update(last=last_page(jobs), done_item=DONE_ITEM)

    def get(path):
        response = client.get(path)
        assert response.status_code == 200, f"GET {path}: {response.status_code} {response.text[:500]}"
        return response.content

    return {name: (lambda path=path.format(**keys): get(path)) for name, path in ROUTES.items()}


def measure(call, repeat: int) -> dict:
    """Call once untimed, then ``repeat`` times; return median and max seconds, the first call's, and the size."""
    start = time.perf_counter()
    call()
    first = time.perf_counter() - start
    seconds = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = call()
        seconds.append(time.perf_counter() - start)
    size = len(result) if isinstance(result, bytes) else len(json.dumps(result, default=str))
    return {"median_s": statistics.median(seconds), "max_s": max(seconds), "first_s": first, "bytes": size}


def one_size(settings, jobs: int, workers: int, repeat: int) -> dict:
    """Fill fresh toy tables with ``jobs`` jobs and time every view; return the figures and the fill times."""
    with toy_schema(settings, 0) as (_, tables):
        start = time.perf_counter()
        steps = fill(tables, jobs, workers)
        steps["total"] = time.perf_counter() - start
        counts = tables.Square().jobs.progress()
        assert counts["total"] == jobs and len(registry.Worker()) == workers, "the fill missed rows"
        views = {**data_views(tables, jobs), **http_views(tables, jobs)}
        figures = {name: measure(call, repeat) for name, call in views.items()}
        return {"fill_s": steps, "views": figures, "statuses": counts}


def main() -> None:
    """Time every view on ``--small`` and ``--jobs`` jobs; print the table, then the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("postgresql", "mysql"), default="postgresql")
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--small", type=int, default=10_000, help="the smaller job count compared (0: none)")
    parser.add_argument("--workers", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    began, load_before = time.perf_counter(), os.getloadavg()[0]
    settings = settings_for(args.backend)
    small = one_size(settings, args.small, args.workers, args.repeat) if args.small else None
    large = one_size(settings, args.jobs, args.workers, args.repeat)
    fill_s = large["fill_s"]
    print(f"\n{args.backend}: {args.jobs:,} jobs ({', '.join(f'{n:,} {s}' for s, n in large['statuses'].items())}), "
          f"{args.workers} workers; filled in {fill_s['total']:.1f} s "
          f"({', '.join(f'{step} {s:.1f}' for step, s in fill_s.items() if step != 'total')})")
    header = f"  {'view':<34} {'median s':>9} {'max s':>7} {'first s':>8} {'bytes':>9}"
    if small:
        header += f" {f'bytes at {args.small:,}':>16} {'median s':>9}"
    print(header)
    for name, figures in large["views"].items():
        line = (f"  {name:<34} {figures['median_s']:9.3f} {figures['max_s']:7.3f} {figures['first_s']:8.3f} "
                f"{figures['bytes']:9,}")
        if small:
            line += f" {small['views'][name]['bytes']:16,} {small['views'][name]['median_s']:9.3f}"
        print(line + ("   OVER 1 s" if figures["max_s"] >= LIMIT_S else ""))
    slowest = max(figures["max_s"] for figures in large["views"].values())
    views = {name: {"median_s": round(figures["median_s"], 4), "max_s": round(figures["max_s"], 4),
                    "bytes": figures["bytes"], **({"bytes_small": small["views"][name]["bytes"]} if small else {})}
             for name, figures in large["views"].items()}
    seconds, load = time.perf_counter() - began, [round(load_before, 2), round(os.getloadavg()[0], 2)]
    print(f"slowest view {slowest:.3f} s; bench {seconds:.0f} s; load average {load[0]} before, {load[1]} after "
          f"on {os.cpu_count()} CPUs (other work on the machine slows every view)")
    print(json.dumps({"backend": args.backend, "jobs": args.jobs, "small": args.small, "workers": args.workers,
                      "views": views, "slowest_s": round(slowest, 4), "under_1s": slowest < LIMIT_S,
                      "fill_s": round(fill_s["total"], 2), "bench_s": round(seconds, 1), "load_average": load}))


if __name__ == "__main__":
    main()
