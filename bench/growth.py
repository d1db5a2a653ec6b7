"""How neuropipe's queue behaves as it grows: claim latency, status, queueing rate.

On one server (``--backend``), for a job queue of ``--small`` and of ``--large`` rows (half of
them done, half pending; 10,000 and 1,000,000 by default):

- claim latency: the median time of one visible claim (:meth:`JobQueue.claim`) and of one
  batch claim (a transaction that locks and reserves 16 jobs, then rolls back), over
  ``--claims`` claims each; the ratio large/small is the growth;
- ``neuropipe status`` (its per-table progress) on the large queue, in seconds;
- queueing: ``refresh()`` of ``--queue`` new keys (100,000), in keys per second, against
  stock DataJoint's ``jobs.refresh()`` on a tenth as many.

The keys themselves are inserted on the server (``generate_series`` / MariaDB's sequence
engine), so building a million-row queue takes seconds.

    python bench/growth.py [--backend postgresql|mysql] [--small 10000] [--large 1000000] [--queue 100000]

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import secrets
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "support"))
sys.path.insert(0, str(ROOT / "bench"))

from overhead import settings_for  # noqa: E402
from worker_runs import toy_schema  # noqa: E402

from neuropipe.worker import status  # noqa: E402
from neuropipe.worker.jobs import Identity, JobQueue  # noqa: E402

BATCH = 16


@contextlib.contextmanager
def fresh_toy(settings):
    """Yield the toy tables, with the worker registry, in a schema of their own; drop both after."""
    with toy_schema(dataclasses.replace(settings, schema_prefix=f"growth_{secrets.token_hex(3)}_")) as tables:
        yield tables


def insert_items(tables, start: int, count: int) -> None:
    """Insert items ``start .. start + count - 1`` with one statement on the server."""
    connection = tables.Item.connection
    if "postgres" in type(connection.adapter).__name__.lower():
        series = f"SELECT generate_series({start}, {start + count - 1})"
    else:
        series = f"SELECT seq FROM `{tables.Item.database}`.seq_{start}_to_{start + count - 1}"
    connection.query(f"INSERT INTO {tables.Item.full_table_name} (item) {series}")


def queue_for(tables) -> JobQueue:
    """Return a queue of ``Square`` as a worker of this process sees it (no provenance: claims only)."""
    return JobQueue(tables.Square, Identity(secrets.token_hex(8), "bench", 1, "bench"), provenance=False)


def claim_latency(queue: JobQueue, claims: int) -> dict:
    """Return the median ms of a visible claim and of a batch claim (rolled back)."""
    visible, batch = [], []
    for _ in range(claims):
        start = time.perf_counter()
        assert queue.claim(1), "the queue ran dry"
        visible.append(time.perf_counter() - start)
    for _ in range(claims):
        start = time.perf_counter()
        queue._begin()
        assert queue._lock_pending(BATCH), "the queue ran dry"
        batch.append(time.perf_counter() - start)
        queue._rollback()
    return {"visible_claim_ms": 1000 * statistics.median(visible), "batch_claim_ms": 1000 * statistics.median(batch)}


def one_size(settings, rows: int, claims: int) -> dict:
    """Build a queue of ``rows`` jobs, half done; return claim latencies and the status time."""
    with fresh_toy(settings) as tables:
        insert_items(tables, 0, rows)
        queue = queue_for(tables)
        queue.refresh()
        jobs = queue.jobs.full_table_name
        queue.connection.query(f"UPDATE {jobs} SET status='success' WHERE MOD(item, 2) = 0")
        queue.connection.query(f"ANALYZE {'TABLE ' if not queue._postgres else ''}{jobs}")
        figures = claim_latency(queue, claims)
        start = time.perf_counter()  # what `neuropipe status` asks of the database
        status.table_progress([tables.Square])
        status.block_progress([tables.Square])
        status.live_workers()
        figures["status_s"] = time.perf_counter() - start
        return figures


def queueing_rate(settings, keys: int, stock: bool) -> float:
    """Return keys per second queued by neuropipe's refresh (or stock DataJoint's) of ``keys`` new keys."""
    with fresh_toy(settings) as tables:
        insert_items(tables, 0, keys)
        start = time.perf_counter()
        if stock:
            tables.Square().jobs.refresh()
        else:
            queue_for(tables).refresh()
        seconds = time.perf_counter() - start
        assert len(tables.Square().jobs) == keys, "not every key was queued"
        return keys / seconds


def main() -> None:
    """Measure both queue sizes and the queueing rate; print a table and the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("postgresql", "mysql"), default="postgresql")
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=1_000_000)
    parser.add_argument("--queue", type=int, default=100_000, help="new keys queued by one refresh")
    parser.add_argument("--claims", type=int, default=200)
    args = parser.parse_args()
    settings = settings_for(args.backend)
    small = one_size(settings, args.small, args.claims)
    large = one_size(settings, args.large, args.claims)
    rate = queueing_rate(settings, args.queue, stock=False)
    stock_rate = queueing_rate(settings, max(args.queue // 10, 10), stock=True)
    print(f"\n{args.backend}: queue of {args.small:,} and {args.large:,} jobs (half done)")
    for name in ("visible_claim_ms", "batch_claim_ms"):
        print(f"  {name:<18} {small[name]:8.3f} -> {large[name]:8.3f}   x{large[name] / small[name]:.2f}")
    print(f"  status on {args.large:,} jobs: {large['status_s']:.2f} s")
    print(f"  refresh of {args.queue:,} new keys: {rate:,.0f} keys/s (stock DataJoint {stock_rate:,.0f} keys/s)")
    print(json.dumps({
        "backend": args.backend, "small": args.small, "large": args.large,
        "visible_claim_ms": [round(small["visible_claim_ms"], 3), round(large["visible_claim_ms"], 3)],
        "batch_claim_ms": [round(small["batch_claim_ms"], 3), round(large["batch_claim_ms"], 3)],
        "claim_growth": round(large["visible_claim_ms"] / small["visible_claim_ms"], 2),
        "batch_claim_growth": round(large["batch_claim_ms"] / small["batch_claim_ms"], 2),
        "status_seconds": round(large["status_s"], 3),
        "refresh_keys_per_s": round(rate), "stock_refresh_keys_per_s": round(stock_rate)}))


if __name__ == "__main__":
    main()
