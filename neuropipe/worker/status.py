"""What the pipeline is doing: per-table progress, live workers, failed jobs, retries.

Functions here return plain data (lists of dicts); :mod:`neuropipe.cli` renders them.
"""

from __future__ import annotations

import fnmatch
import os

from neuropipe import __version__
from neuropipe.worker import registry
from neuropipe.worker.holdings import Identity, host_name
from neuropipe.worker.jobs import JobQueue

STATUSES = ("pending", "reserved", "success", "error", "ignore")


def table_progress(tables) -> list[dict]:
    """Per table: rows done, jobs by status, and who is running its reserved jobs."""
    return [dict(table=table.__name__, done=len(table()), **job_counts(table)) for table in tables]


def job_counts(table) -> dict:
    """Return a table's jobs pending, running, failed and ignored, and who runs them.

    One ``GROUP BY`` over the unfinished statuses (a range of the status index: the finished
    jobs, most of a large table, are not read) and one look at the reserved jobs.
    """
    jobs = table().jobs
    if not jobs.is_declared:
        return dict(pending=0, running=0, error=0, ignored=0, workers=[])
    quote = table.connection.adapter.quote_identifier
    found = dict(table.connection.query(
        f"SELECT {quote('status')}, COUNT(*) FROM {jobs.full_table_name} WHERE {quote('status')} IN "
        f"('pending', 'reserved', 'error', 'ignore') GROUP BY {quote('status')}").fetchall())
    running = table.connection.query(
        f"SELECT DISTINCT {quote('host')}, {quote('pid')} FROM {jobs.full_table_name} "
        f"WHERE {quote('status')} = 'reserved'").fetchall()
    return dict(pending=int(found.get("pending", 0)), running=int(found.get("reserved", 0)),
                error=int(found.get("error", 0)), ignored=int(found.get("ignore", 0)),
                workers=sorted(f"{host}:{pid}" for host, pid in running))


def block_progress(tables) -> list[dict]:
    """Per blockwise table and dataset: blocks done of all, and jobs pending, running, failed.

    A block whose job failed is retried alone; the others of its volume stay done.
    """
    from neuropipe.blockwise import PerBlock

    rows = []
    for table in tables:
        if not issubclass(table, PerBlock):
            continue
        jobs = table().jobs
        for dataset in sorted(set(table().key_source.to_arrays("dataset"))):
            where = {"dataset": dataset}
            counts = {status: len(jobs & where & {"status": status}) for status in ("pending", "reserved", "error")}
            rows.append(dict(table=table.__name__, dataset=dataset, done=len(table() & where),
                             total=len(table().key_source & where), pending=counts["pending"],
                             running=counts["reserved"], error=counts["error"]))
    return rows


def live_workers() -> list[dict]:
    """Return the registered workers that are running, stopping or lost, newest first."""
    now = registry.server_now(registry.Worker.connection)
    workers = (registry.Worker & "status in ('running', 'stopping', 'lost')").to_dicts(order_by="started_time DESC")
    for worker in workers:
        worker["heartbeat_age"] = (now - worker["heartbeat_time"]).total_seconds()
    return workers


def failed_jobs(tables, *, pattern: str | None = None, tracebacks: bool = False) -> list[dict]:
    """Jobs in status ``error``, with their message, attempts and the worker that ran them last."""
    found = []
    for table in _matching(tables, pattern):
        jobs = table().jobs
        attributes = ["host", "pid", "completed_time", "error_message"] + (["error_stack"] if tracebacks else [])
        for job in jobs.errors.proj(*attributes).to_dicts():
            key = {name: job[name] for name in jobs.primary_key}
            history = registry.Failure & {"table_name": table.full_table_name, "key_hash": registry.key_hash(key)}
            found.append(dict(table=table.__name__, key=key, message=job["error_message"],
                              attempts=len(history & {"cleared": False}), worker=f"{job['host']}:{job['pid']}",
                              when=job["completed_time"], traceback=job.get("error_stack")))
    return found


def retry(tables, *, pattern: str | None = None, key: dict | None = None) -> int:
    """Send failed jobs back to the queue (all, those of matching tables, or one key), pending at once.

    Their earlier attempts stop counting against the retry limit but stay in the history.  The
    keys are queued again now, not at a worker's next look, so every view shows them pending.

    Returns
    -------
    int
        The number of jobs re-queued.
    """
    count = 0
    for table in _matching(tables, pattern):
        jobs = table().jobs
        failed = jobs.errors & key if key else jobs.errors
        retried = []
        for job_key in failed.proj().to_dicts():
            history = registry.Failure & {"table_name": table.full_table_name,
                                          "key_hash": registry.key_hash(job_key)}
            for attempt in history.proj().to_dicts():
                registry.Failure.update1({**attempt, "cleared": True})
            (jobs & job_key).delete_quick()
            retried.append(job_key)
        if retried:
            JobQueue(table, _requeuer()).refresh([retried])
        count += len(retried)
    return count


def _requeuer() -> Identity:
    """Return who queues retried jobs: this process, under a worker id of its own."""
    return Identity("retry", host_name(), os.getpid(), f"neuropipe {__version__}")


def _matching(tables, pattern):
    return [t for t in tables if not pattern or fnmatch.fnmatch(t.__name__, pattern)]
