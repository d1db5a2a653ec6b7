"""How many claims and completions one database server sustains, with 1 to 64 clients at once.

Each client is a process of its own with its own connection, looping for ``--seconds`` over
the cycle a worker goes through for every job, without the job itself: claim one job
(visible, :meth:`JobQueue.claim`) and complete it (its job row to ``success``, one durable
commit); and, for batches, claim 16 jobs inside a transaction and complete them with one
commit.  The queue holds ``--jobs`` pending jobs of the toy ``Square`` table, inserted on the
server.  The rates (jobs per second, all clients together) are what the server can feed:
with jobs of d seconds, it keeps about ``rate * d`` workers busy (``bench/README.md``).

Clients and server share this machine's cores, so past a few clients the rate measures the
machine as much as the server; the figures say where one server stops scaling, not its
ceiling on dedicated hardware.

    python bench/capacity.py [--backend postgresql|mysql] [--clients 1 4 16 64] [--seconds 5]

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import secrets
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "support"))
sys.path.insert(0, str(ROOT / "bench"))

from growth import fresh_toy, insert_items  # noqa: E402
from overhead import settings_for  # noqa: E402

BATCH = 16


def client(settings, schema_name: str, prefix: str, seconds: float, batch: bool, ready, results) -> None:
    """Once every client is connected (``ready``, a barrier), claim and complete jobs for ``seconds``.

    Puts the number of jobs into ``results``.
    """
    import toy_pipeline

    from neuropipe.database import connect, import_datajoint
    from neuropipe.worker import registry
    from neuropipe.worker.jobs import Identity, JobQueue

    dj = import_datajoint()
    connection = connect(settings)
    registry.activate(prefix, connection)
    tables = toy_pipeline.declare(dj.Schema(schema_name, connection=connection))
    queue = JobQueue(tables.Square, Identity(secrets.token_hex(8), "capacity", os.getpid(), "bench"),
                     provenance=False)
    table = tables.Square()
    ready.wait()
    done, deadline = 0, time.time() + seconds
    while time.time() < deadline:
        if batch:
            queue._begin()
            keys = queue._lock_pending(BATCH)
        else:
            keys = queue.claim(1)
            queue._begin()
        queue._complete(table, [(key, time.time(), 0.0) for key in keys], made=0)
        queue.connection.commit_transaction()
        queue.forget(keys)
        done += len(keys)
    results.put(done)


def rate(settings, clients: int, seconds: float, jobs: int, batch: bool) -> float:
    """Return jobs per second claimed and completed by ``clients`` processes together."""
    with fresh_toy(settings) as tables:
        schema_name = tables.Item.database
        prefix = schema_name[:-len("toy")]
        insert_items(tables, 0, jobs)
        from neuropipe.worker.jobs import Identity, JobQueue

        JobQueue(tables.Square, Identity("filler", "capacity", 0, "bench"), provenance=False).refresh()
        context = multiprocessing.get_context("spawn")
        results = context.Queue()
        ready = context.Barrier(clients)
        processes = [context.Process(target=client, args=(settings, schema_name, prefix, seconds, batch,
                                                           ready, results)) for _ in range(clients)]
        for process in processes:
            process.start()
        total = sum(results.get(timeout=300 + seconds) for _ in processes)
        for process in processes:
            process.join()
        return total / seconds


def main() -> None:
    """Measure each number of clients, visible and batched; print a table and the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("postgresql", "mysql"), default="postgresql")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--jobs", type=int, default=300_000, help="pending jobs in the queue (enough not to run dry)")
    args = parser.parse_args()
    settings = settings_for(args.backend)
    visible = {count: rate(settings, count, args.seconds, args.jobs, batch=False) for count in args.clients}
    batched = {count: rate(settings, count, args.seconds, args.jobs, batch=True) for count in args.clients}
    print(f"\n{args.backend}: jobs claimed and completed per second, all clients together")
    print(f"  {'clients':>8} {'one job per commit':>20} {'16 jobs per commit':>20}")
    for count in args.clients:
        print(f"  {count:>8} {visible[count]:>20,.0f} {batched[count]:>20,.0f}")
    print(json.dumps({"backend": args.backend, "seconds": args.seconds,
                      "visible_jobs_per_s": {count: round(value) for count, value in visible.items()},
                      "batched_jobs_per_s": {count: round(value) for count, value in batched.items()}}))


if __name__ == "__main__":
    main()
