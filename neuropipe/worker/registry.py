"""The worker registry: who is working, where, on what, and what failed.

Workers coordinate through the database only.  Besides DataJoint's per-table job tables
(the queue), neuropipe keeps one small schema, ``<prefix>workers``, with two tables:

- :class:`Worker`: one row per worker process (host, pid, resources, start, heartbeat,
  current job).  A background thread refreshes the heartbeat; a worker whose heartbeat is
  older than twice its interval is presumed dead and its jobs go back to the queue.
- :class:`Failure`: one row per failed attempt of a job, so retries are counted and the
  history of errors stays queryable after a job finally succeeds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time

from neuropipe.database import bind_schema, drop_schema, import_datajoint

logger = logging.getLogger(__name__)
dj = import_datajoint()
schema = dj.Schema()


@schema
class Worker(dj.Manual):
    """A worker process, registered when it starts and kept as a record after it stops.

    Attributes
    ----------
    status : {'running', 'stopping', 'stopped', 'lost'}
        ``lost``: another worker saw its heartbeat stop.
    heartbeat_seconds : float
        Its heartbeat interval; it is presumed dead after twice that without a heartbeat.
    """

    definition = """
    worker_id : char(32)                  # random id
    ---
    host : varchar(255)
    pid : int32
    status : enum('running', 'stopping', 'stopped', 'lost')
    started_time : datetime(3)            # server time
    heartbeat_time : datetime(3)          # server time of the last heartbeat
    heartbeat_seconds : float64           # interval between heartbeats
    resources : json                      # {"gpus": [...], "memory_gb": ..., "cpus": ...}
    tables = "" : varchar(4000)           # the tables it serves
    current_table = "" : varchar(255)     # job in progress, if any
    current_key = null : json
    jobs_done = 0 : int32
    jobs_failed = 0 : int32
    version = "" : varchar(64)            # neuropipe version
    connection_id = 0 : int64
    """


@schema
class Failure(dj.Manual):
    """One failed attempt of a job: the retry count and the error history.

    Attributes
    ----------
    kind : {'transient', 'permanent'}
        Transient failures are retried with backoff; permanent ones are not.
    cleared : bool
        Set by ``neuropipe retry``: the attempt no longer counts against the retry limit.
    """

    definition = """
    table_name : varchar(255)             # full name of the auto-populated table
    key_hash : char(32)                   # hash of the job's primary key
    attempt : int32                       # 1, 2, ...
    ---
    job_key : json
    worker_id = "" : char(32)
    failed_time : datetime(3)
    kind : enum('transient', 'permanent')
    error_message : varchar(2047)
    cleared = 0 : bool
    """


def activate(prefix: str, connection) -> None:
    """Bind the registry to the schema ``<prefix>workers`` on ``connection``."""
    bind_schema(schema, prefix + "workers", connection)


def ensure_active(connection) -> None:
    """Bind the registry to the configured prefix unless it is bound, on ``connection``, to a live schema."""
    if schema.database is None or schema.connection is not connection or not schema.exists:
        from neuropipe.config import load_settings
        from neuropipe.database import retrying_declaration

        retrying_declaration(activate, load_settings().schema_prefix, connection)


def drop() -> None:
    """Drop the registry schema (tests)."""
    drop_schema(schema)


def key_hash(key: dict) -> str:
    """Return a stable 32-hex-digit hash of a primary key."""
    return hashlib.md5(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def server_now(connection):
    """Return the database server's current time, naive as stored in ``datetime`` columns.

    All job and heartbeat times are server times, so workers need not agree on their clocks.
    """
    return connection.query("SELECT CURRENT_TIMESTAMP(3)").fetchone()[0].replace(tzinfo=None)


class Heartbeat:
    """A daemon thread that heartbeats and looks for dead workers, over a connection of its own.

    The main thread may spend minutes inside one ``make()`` and one transaction; neither the
    heartbeat nor the rescue of a dead worker's jobs may wait for it.  The thread beats every
    ``seconds`` and calls ``sweep(connection)`` twice as often.
    """

    def __init__(self, worker_id: str, seconds: float, connect, sweep=None):
        self.worker_id = worker_id
        self.seconds = seconds
        self._connect = connect
        self._sweep = sweep
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="neuropipe-heartbeat", daemon=True)
        self.current: tuple[str, dict | None] = ("", None)
        self.counts: tuple[int, int] = (0, 0)  # jobs done and failed so far, written with each beat

    def start(self) -> None:
        """Start beating."""
        self._thread.start()

    def stop(self) -> None:
        """Stop beating (within one interval)."""
        self._stop.set()
        self._thread.join(timeout=self.seconds + 5)

    def _run(self) -> None:
        connection, last_beat, failing = None, 0.0, False
        while not self._stop.wait(self.seconds / 2):
            try:
                connection = connection or self._connect()
                if time.monotonic() - last_beat >= self.seconds * 0.9:
                    self.beat(connection)
                    last_beat = time.monotonic()
                if self._sweep:
                    self._sweep(connection)
            except Exception as error:  # the server may be restarting: try again next time
                log = logger.debug if failing else logger.warning
                log("heartbeat failed (%s: %s); retrying every %.1f s", error.__class__.__name__, error,
                    self.seconds / 2)
                connection, failing = None, True
            else:
                if failing:
                    logger.info("heartbeat restored")
                failing = False

    def beat(self, connection) -> None:
        """Write one heartbeat: the time, the current job, the counts so far, and 'running' again if marked lost."""
        table, key = self.current
        done, failed = self.counts
        quote = connection.adapter.quote_identifier
        connection.query(
            f"UPDATE {Worker.full_table_name} SET {quote('heartbeat_time')}=CURRENT_TIMESTAMP(3), "
            f"{quote('current_table')}=%s, {quote('current_key')}=%s, {quote('jobs_done')}=%s, "
            f"{quote('jobs_failed')}=%s, "
            f"{quote('status')}=CASE WHEN {quote('status')}='lost' THEN 'running' ELSE {quote('status')} END "
            f"WHERE {quote('worker_id')}=%s",
            args=(table, json.dumps(key, default=str) if key else None, done, failed, self.worker_id),
        )


def _update_workers(worker_ids, connection=None, **values) -> None:
    """Set attributes of the given workers' rows in one statement."""
    if not worker_ids:
        return
    connection = connection or Worker.connection
    quote = connection.adapter.quote_identifier
    assignments = ", ".join(f"{quote(name)}=%s" for name in values)
    marks = ", ".join(["%s"] * len(worker_ids))
    connection.query(f"UPDATE {Worker.full_table_name} SET {assignments} WHERE {quote('worker_id')} IN ({marks})",
                     args=(*values.values(), *worker_ids))


def update_connection(worker_id: str, connection_id: int, connection) -> None:
    """Record the id of a worker's new database connection (after a reconnection)."""
    _update_workers([worker_id], connection=connection, connection_id=connection_id)


def deregister(worker_id: str, *, done: int, failed: int) -> None:
    """Mark a worker stopped, with its final counts."""
    _update_workers([worker_id], status="stopped", current_table="", current_key=None, jobs_done=done,
                    jobs_failed=failed)


def pid_alive(pid: int) -> bool:
    """Return whether process ``pid`` of this host is alive (a zombie counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class OrphanJudge:
    """Tells whether a reserved job's worker is gone, as the registry stood at ``as_of``.

    A job is orphaned when the worker that reserved it (the latest registered worker with
    its host and pid) has stopped or has not heartbeaten for twice its interval, or when it
    was reserved on this host by a process that no longer exists.  A worker marked ``lost``
    that heartbeats again (it rode out a database outage) is alive.  A reservation by an
    unregistered process on another host (e.g. a plain DataJoint ``populate``) cannot be
    judged and is left alone.

    Attributes
    ----------
    as_of : datetime
        Server time of the judgement; reservations made since are not judged by it.
    """

    def __init__(self, as_of, latest: dict, my_host: str):
        self.as_of = as_of
        self._latest = latest
        self._my_host = my_host

    def __call__(self, job: dict) -> bool:
        """Return whether the worker that reserved ``job`` (its ``host`` and ``pid``) is gone."""
        if job["host"] == self._my_host and not pid_alive(job["pid"]):
            return True
        worker = self._latest.get((job["host"], job["pid"]))
        return worker is not None and (worker["status"] == "stopped" or worker["silent"])


def orphan_judge(connection, my_host: str) -> OrphanJudge:
    """Read the registry and return an :class:`OrphanJudge`; mark silent workers ``lost`` on the way."""
    now = server_now(connection)
    quote = connection.adapter.quote_identifier
    names = ("worker_id", "host", "pid", "status", "started_time", "heartbeat_time", "heartbeat_seconds")
    workers = connection.query(f"SELECT {', '.join(map(quote, names))} FROM {Worker.full_table_name}",
                               as_dict=True).fetchall()
    # ``latest`` keeps, per host and pid, the most recently started worker (pids get reused)
    latest = {}
    for worker in sorted(workers, key=lambda row: row["started_time"]):
        worker["silent"] = (now - worker["heartbeat_time"]).total_seconds() > 2 * worker["heartbeat_seconds"]
        latest[(worker["host"], worker["pid"])] = worker
    lost = [w["worker_id"] for w in latest.values() if w["status"] == "running" and w["silent"]]
    if lost:
        _update_workers(lost, status="lost", connection=connection)
        logger.warning("workers %s stopped heartbeating; marked lost", ", ".join(w[:8] for w in lost))
    return OrphanJudge(now, latest, my_host)
