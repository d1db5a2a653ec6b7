"""Per-job overhead of neuropipe against the tools users would otherwise pick, in one run.

1,000 trivial jobs (the job inserts one small row; for the file-based tools it writes one
small file) on the same machine and database, by:

- a neuropipe :class:`~neuropipe.worker.Worker` with default settings (durable; batches
  chosen from measured job durations), forced to one job per transaction (``batch=1``),
  forced to batches of 256 (``batch=256``), and with default settings but no provenance
  records (what the records cost);
- stock DataJoint 2: ``populate(reserve_jobs=True)`` (its distributed mode) and
  ``populate()`` without a job table (no coordination at all);
- Snakemake (one rule, 1,000 outputs, local executor; ``shell:`` jobs, its cheapest: a
  ``run:`` job starts a Python process of its own, some 2 s each here);
- Prefect (one task per job, result persistence on, its ephemeral local server).

Per way: ms per job, SQL round trips per job (statements sent through DataJoint's
connection, heartbeats included) and durable commits per job (the server's own count of
log flushes: ``pg_stat_wal.wal_sync`` on PostgreSQL, ``Innodb_data_fsyncs`` on MariaDB).
Snakemake and Prefect run in a virtual environment of their own (``.venv-peers``, from
``bench/peers.txt``), timed so that their start-up is not charged per job: Snakemake as the
marginal cost of ``--jobs`` outputs over one, Prefect as the time of the task calls inside a
flow (after a first flow has started its local server).

    python bench/overhead.py [--jobs 1000] [--backend postgresql|mysql] [--peers-python PATH]

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "support"))

import toy_pipeline  # noqa: E402

from neuropipe.config import Settings  # noqa: E402
from neuropipe.database import connect, import_datajoint  # noqa: E402
from neuropipe.worker import (  # noqa: E402
    Worker,
    WorkerOptions,
    registry,  # noqa: E402
)

SERVERS = {"postgresql": ("127.0.0.1", 5432, "root"), "mysql": ("127.0.0.1", 3306, "root")}
DURABLE_COMMITS = {"postgresql": "SELECT wal_sync FROM pg_stat_wal",
                   "mysql": "SELECT variable_value FROM information_schema.global_status "
                            "WHERE variable_name='INNODB_DATA_FSYNCS'"}
SNAKEFILE = """
rule all:
    input: expand("out/{i}.txt", i=range(int(config["jobs"])))

rule square:
    output: "out/{i}.txt"
    shell: "echo $(({wildcards.i} * {wildcards.i})) > {output}"
"""
PREFECT = """
import sys, time
from prefect import flow, task

@task(persist_result=True)
def square(i):
    return i * i

@flow
def squares(count):
    start = time.perf_counter()
    for i in range(count):
        square(i)
    return time.perf_counter() - start

squares(1)  # starts the local server
print(squares(int(sys.argv[1])))
"""


class Counter:
    """Counts the statements DataJoint connections send (one round trip each) while active."""

    def __init__(self):
        self.statements = 0

    @contextlib.contextmanager
    def active(self):
        """Count while the ``with`` block runs."""
        dj = import_datajoint()
        original = dj.Connection._execute_query

        def counted(connection, cursor, query, args, suppress_warnings):
            self.statements += 1
            return original(connection, cursor, query, args, suppress_warnings)

        dj.Connection._execute_query = counted
        try:
            yield self
        finally:
            dj.Connection._execute_query = original


def durable_commits(settings: Settings) -> int:
    """Return the server's count of log flushes so far (its own statistics, on a connection of the bench's own)."""
    if settings.backend == "postgresql":
        import psycopg2

        connection = psycopg2.connect(host=settings.host, port=settings.port, user=settings.user, dbname="postgres")
    else:
        import pymysql

        connection = pymysql.connect(host=settings.host, port=settings.port, user=settings.user, password="")
    try:
        with connection.cursor() as cursor:
            cursor.execute(DURABLE_COMMITS[settings.backend])
            return int(cursor.fetchone()[0])
    finally:
        connection.close()


@contextlib.contextmanager
def toy_schema(settings: Settings, jobs: int):
    """Yield ``(schema, tables)``: toy tables in fresh schemas, ``jobs`` items (none unlucky); drop them after."""
    dj = import_datajoint()
    prefix = f"bench_{secrets.token_hex(3)}_"
    connection = connect(settings)
    registry.activate(prefix, connection)
    schema = dj.Schema(prefix + "toy", connection=connection)
    tables = toy_pipeline.declare(schema)
    tables.Item.insert([{"item": i} for i in range(jobs + 1) if i != toy_pipeline.UNLUCKY])
    try:
        yield schema, tables
    finally:
        schema.drop(prompt=False)
        registry.drop()


def timed(settings: Settings, jobs: int, run) -> dict:
    """Declare fresh toy tables, queue ``jobs`` items, time ``run(tables)``; return per-job figures."""
    with toy_schema(settings, jobs) as (_, tables):
        time.sleep(1.5)  # PostgreSQL backends publish their statistics after 1 s idle
        before = durable_commits(settings)
        with Counter().active() as counter:
            start = time.perf_counter()
            run(tables)
            elapsed = time.perf_counter() - start
        time.sleep(1.5)
        flushes = durable_commits(settings) - before
        assert len(tables.Square()) == jobs, "not every job was done"
    return {"ms_per_job": 1000 * elapsed / jobs, "round_trips_per_job": counter.statements / jobs,
            "durable_commits_per_job": flushes / jobs}


def snakemake(python: str, jobs: int) -> dict:
    """Return Snakemake's ms per job: ``jobs`` outputs less one output, each in a fresh folder."""
    seconds = []
    for count in (1, jobs):
        folder = Path(tempfile.mkdtemp(prefix="bench-snakemake-"))
        (folder / "Snakefile").write_text(SNAKEFILE)
        start = time.perf_counter()
        subprocess.run([python, "-m", "snakemake", "--cores", "1", "--quiet", "all", "--config", f"jobs={count}"],
                       cwd=folder, check=True, capture_output=True)
        seconds.append(time.perf_counter() - start)
        assert len(list((folder / "out").iterdir())) == count
    return {"ms_per_job": 1000 * (seconds[1] - seconds[0]) / (jobs - 1)}


def prefect(python: str, jobs: int) -> dict:
    """Return Prefect's ms per job: the task calls of a flow of ``jobs`` persisted tasks (its set-up left out)."""
    home = Path(tempfile.mkdtemp(prefix="bench-prefect-"))
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_LOGGING_LEVEL": "WARNING", "DO_NOT_TRACK": "1"}
    for attempt in (1, 2):  # Prefect's own local server may fail to start in time on a loaded machine: once more
        done = subprocess.run([python, "-c", PREFECT, str(jobs)], env=env, capture_output=True, text=True)
        if done.returncode == 0:
            return {"ms_per_job": 1000 * float(done.stdout.strip().splitlines()[-1]) / jobs}
        print(f"Prefect peer failed (attempt {attempt} of 2): {done.stderr.strip()[-1500:]}", file=sys.stderr)
    raise RuntimeError("the Prefect peer failed twice; its errors are above")


def settings_for(backend: str) -> Settings:
    """Return settings of the local server of ``backend``."""
    host, port, user = SERVERS[backend]
    return Settings(host=host, port=port, user=user, backend=backend,
                    store=Path(tempfile.mkdtemp(prefix="bench-store-")))


def worker(**options):
    """Return a way that drains the toy table with one neuropipe worker in this process."""
    return lambda tables: Worker([tables.Square], WorkerOptions(max_idle=0, **options)).serve()


WAYS = {
    "neuropipe": ("neuropipe worker (default)", worker()),
    "neuropipe_batch1": ("neuropipe worker, batch=1 (one job per transaction)", worker(batch=1)),
    "neuropipe_batched": ("neuropipe worker, batch=256", worker(batch=256)),
    "neuropipe_no_provenance": ("neuropipe worker (default), no provenance records", worker(provenance=False)),
    "datajoint": ("DataJoint populate(reserve_jobs=True)", lambda tables: tables.Square.populate(reserve_jobs=True)),
    "datajoint_bare": ("DataJoint populate() (no job table)", lambda tables: tables.Square.populate()),
}


def main() -> None:
    """Time every way, print the table, then the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--backend", choices=tuple(SERVERS), default="postgresql")
    parser.add_argument("--peers-python", default=str(ROOT / ".venv-peers" / "bin" / "python"),
                        help="a Python with snakemake and prefect (default .venv-peers/bin/python)")
    parser.add_argument("--no-peers", action="store_true", help="skip Snakemake and Prefect")
    args = parser.parse_args()
    settings = settings_for(args.backend)
    results = {name: timed(settings, args.jobs, run) for name, (_, run) in WAYS.items()}
    labels = {name: label for name, (label, _) in WAYS.items()}
    peers_python = None if args.no_peers or not Path(args.peers_python).exists() else args.peers_python
    if peers_python:
        results["snakemake"] = snakemake(peers_python, args.jobs)
        results["prefect"] = prefect(peers_python, args.jobs)
        labels.update(snakemake="Snakemake (local executor, shell: jobs)", prefect="Prefect (persisted task results)")
    else:
        print(f"Snakemake and Prefect skipped: no {args.peers_python} "
              "(python -m venv .venv-peers && .venv-peers/bin/pip install -r bench/peers.txt)")
    peer = results["datajoint"]["ms_per_job"]
    print(f"\n{args.backend}: {args.jobs} trivial jobs")
    print(f"  {'way':<54} {'ms/job':>8} {'x reserve_jobs':>15} {'round trips/job':>16} {'commits/job':>12}")
    for name, figures in results.items():
        trips = figures.get("round_trips_per_job")
        commits = figures.get("durable_commits_per_job")
        print(f"  {labels[name]:<54} {figures['ms_per_job']:8.3f} {figures['ms_per_job'] / peer:15.3f} "
              f"{'n/a' if trips is None else f'{trips:.2f}':>16} {'n/a' if commits is None else f'{commits:.3f}':>12}")
    summary = {f"{name}_ms_per_job": round(figures["ms_per_job"], 4) for name, figures in results.items()}
    summary.update({f"{name}_round_trips_per_job": round(figures["round_trips_per_job"], 3)
                    for name, figures in results.items() if "round_trips_per_job" in figures})
    summary.update({f"{name}_durable_commits_per_job": round(figures["durable_commits_per_job"], 4)
                    for name, figures in results.items() if "durable_commits_per_job" in figures})
    summary.setdefault("snakemake_ms_per_job", None)
    summary.setdefault("prefect_ms_per_job", None)
    summary.update(backend=args.backend, jobs=args.jobs,
                   neuropipe_over_datajoint=round(results["neuropipe"]["ms_per_job"] / peer, 3),
                   batched_over_datajoint=round(results["neuropipe_batched"]["ms_per_job"] / peer, 3))
    if peers_python:
        summary["snakemake_over_neuropipe"] = round(results["snakemake"]["ms_per_job"]
                                                    / results["neuropipe"]["ms_per_job"], 1)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
