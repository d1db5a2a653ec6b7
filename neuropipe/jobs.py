"""One table's job queue, on DataJoint's own job table (``Table().jobs``).

:class:`JobQueue` adds what a fleet of workers needs to DataJoint's per-table job table,
and keeps every state in that table so what DataJoint users already query shows the truth:

- ``refresh`` queues new keys in one bulk insert (and re-queues finished keys whose rows
  were deleted);
- ``claim`` reserves one or several pending keys in one atomic conditional UPDATE;
- ``run`` calls ``make()`` and marks the job done *in the same transaction*, so a job is
  never done without its rows nor its rows without the job done (with the claim, two
  commits per job where DataJoint's populate makes four), and a worker that lost its
  reservation while paused cannot create a duplicate or an error row;
- ``fail`` records the attempt in :class:`~neuropipe.registry.Failure` and either
  re-queues the job with backoff (transient failures) or marks it ``error`` (permanent);
- ``release`` and ``reset_orphans`` hand reservations back to the queue.
"""

from __future__ import annotations

import datetime
import inspect
import json
import logging
import random
import time
import traceback
from dataclasses import dataclass

from neuropipe import failures, registry
from neuropipe.database import import_datajoint, retrying_declaration

logger = logging.getLogger(__name__)
dj = import_datajoint()
Not = dj.condition.Not


@dataclass(frozen=True)
class Identity:
    """Who claims jobs: written into the job table's host, pid and version columns."""

    worker_id: str
    host: str
    pid: int
    version: str


class JobQueue:
    """The job queue of one auto-populated table, as one worker sees it.

    Parameters
    ----------
    table : table class
        A ``dj.Computed`` or ``dj.Imported`` class, bound to a schema.
    identity : Identity
        The worker that claims jobs through this queue.
    """

    def __init__(self, table, identity: Identity):
        self.table = table
        self.identity = identity
        self.jobs = retrying_declaration(lambda: table().jobs)
        self.connection = self.jobs.connection
        self.quote = self.connection.adapter.quote_identifier
        self.primary_key = list(self.jobs.primary_key)
        self.user = self.connection.get_user()

    @property
    def name(self) -> str:
        """str: The table's class name."""
        return self.table.__name__

    # --- queueing -----------------------------------------------------------------------

    def refresh(self, restrictions=()) -> int:
        """Queue the keys of ``key_source`` (under ``restrictions``) that have no job yet.

        Returns
        -------
        int
            The number of keys queued.
        """
        source = self.table().key_source
        for restriction in restrictions:
            source = source & restriction
        target = self.table().proj()
        # The job table's key attributes have a lineage of their own: compare without the check.
        rerun = self.jobs.completed.restrict(source, semantic_check=False).restrict(Not(target), semantic_check=False)
        if rerun:  # rows deleted by hand since: compute them again
            self._set_pending(rerun.proj().to_dicts(), "re-queued: its rows were deleted")
        new = (source - target).restrict(Not(self.jobs), semantic_check=False).proj().to_dicts()
        if new:
            priority = self.connection._config.jobs.default_priority
            self.jobs.insert([{**key, "status": "pending", "priority": priority} for key in new],
                             skip_duplicates=True, ignore_extra_fields=True)
        return len(new)

    def claim(self, count: int = 1) -> list[dict]:
        """Reserve up to ``count`` pending jobs for this worker, atomically.

        Several workers may race for the same keys; the conditional UPDATE gives each key
        to exactly one of them.
        """
        ready = self.jobs & "status='pending'" & f"{self.quote('scheduled_time')} <= CURRENT_TIMESTAMP(3)"
        candidates = ready.proj().to_dicts(order_by=("priority", "scheduled_time"), limit=4 * count)
        if not candidates:
            return []
        candidates = random.sample(candidates, min(count, len(candidates)))
        condition = self._condition(candidates)
        q = self.quote
        cursor = self.connection.query(
            f"UPDATE {self.jobs.full_table_name} SET {q('status')}='reserved', {q('host')}=%s, {q('pid')}=%s, "
            f"{q('connection_id')}=%s, {q('user')}=%s, {q('version')}=%s, "
            f"{q('reserved_time')}=CURRENT_TIMESTAMP(3) "
            f"WHERE {q('status')}='pending' AND {q('scheduled_time')} <= CURRENT_TIMESTAMP(3) AND ({condition})",
            args=(self.identity.host, self.identity.pid, self.connection.connection_id,
                  self.user, self.identity.version),
        )
        if cursor.rowcount == len(candidates):
            return candidates
        if cursor.rowcount == 0:
            return []
        return (self.jobs & candidates & self._mine() & "status='reserved'").proj().to_dicts()

    def release(self, keys=None, note: str = "released by a stopping worker") -> None:
        """Hand this worker's reservations of ``keys`` (default: all of them) back to the queue."""
        keys = list((self.jobs & self._mine() & "status='reserved'").proj().to_dicts() if keys is None else keys)
        if keys:
            self._set_pending(keys, note, only_mine=True)

    # --- running ------------------------------------------------------------------------

    def run(self, key: dict, make_kwargs: dict | None = None) -> str:
        """Call ``make(key)`` and mark the job done, in one transaction.

        Returns
        -------
        str
            ``'done'``, or ``'skipped'`` when the key's rows exist already (made by another
            worker, e.g. while this one was paused and lost its reservation).

        Raises
        ------
        BaseException
            Whatever ``make()`` raised, after the transaction was rolled back.
        """
        table = self.table()
        start = time.time()
        self.connection.start_transaction()
        try:
            if table & key:
                outcome = "skipped"
            else:
                _call_make(table, key, make_kwargs, self.identity.version)
                outcome = "done"
            self._complete(table, key, start)
            self.connection.commit_transaction()
        except dj.errors.DuplicateError:
            self._rollback()
            logger.warning("%s %s was made by another worker meanwhile; keeping theirs", self.name, key)
            self.connection.start_transaction()
            self._complete(table, key, start)
            self.connection.commit_transaction()
            return "skipped"
        except BaseException:
            self._rollback()
            raise
        return outcome

    def fail(self, key: dict, error: BaseException, *, max_retries: int, backoff: float = 2.0) -> str:
        """Record a failed attempt; re-queue it with backoff or mark it ``error``.

        Returns
        -------
        str
            ``'retry'`` or ``'error'``.
        """
        transient = failures.is_transient(error, self.table)
        message = failures.describe(error)
        attempts = self._record_failure(key, transient, message)
        if transient and attempts <= max_retries:
            delay = failures.backoff_seconds(attempts, base=backoff)
            when = registry.server_now(self.connection) + datetime.timedelta(seconds=delay)
            note = f"attempt {attempts} of {max_retries + 1} failed, retrying after {delay:.1f} s: {message}"
            self._set_pending([key], note, only_mine=True, scheduled=when)
            logger.warning("%s %s: %s", self.name, key, note)
            return "retry"
        if transient:
            message = f"gave up after {attempts} attempts: {message}"
        self.jobs.error(key, error_message=message, error_stack="".join(traceback.format_exception(error)))
        logger.error("%s %s failed: %s", self.name, key, message)
        return "error"

    def reset_orphans(self, is_orphan, connection) -> int:
        """Return reserved jobs whose worker is gone (``is_orphan(job)``) to the queue.

        Runs on ``connection`` (the heartbeat thread's), not on the table's own.
        """
        q = self.quote
        columns = ", ".join(q(name) for name in [*self.primary_key, "host", "pid"])
        reserved = connection.query(f"SELECT {columns} FROM {self.jobs.full_table_name} WHERE {q('status')}='reserved'",
                                    as_dict=True).fetchall()
        count = 0
        for job in reserved:
            if is_orphan(job):
                key = {name: job[name] for name in self.primary_key}
                note = f"re-queued: its worker {job['host']}:{job['pid']} stopped"
                count += self._set_pending([key], note, owner=(job["host"], job["pid"]), connection=connection)
                logger.warning("%s %s %s", self.name, key, note)
        return count

    # --- internals ----------------------------------------------------------------------

    def _complete(self, table, key: dict, start: float) -> None:
        """Within the make's transaction: job metadata and the job's 'success'."""
        duration = time.time() - start
        if table._has_job_metadata_attrs():
            table._update_job_metadata(key, start_time=datetime.datetime.fromtimestamp(start),
                                       duration=duration, version=self.identity.version)
        q = self.quote
        where = f"({self._condition([key])}) AND {self._owned_by()}"
        owner = (self.identity.host, self.identity.pid)
        if self.connection._config.jobs.keep_completed:
            cursor = self.connection.query(
                f"UPDATE {self.jobs.full_table_name} SET {q('status')}='success', "
                f"{q('completed_time')}=CURRENT_TIMESTAMP(3), {q('duration')}=%s, {q('error_message')}='' "
                f"WHERE {where}", args=(duration, *owner))
        else:
            cursor = self.connection.query(f"DELETE FROM {self.jobs.full_table_name} WHERE {where}", args=owner)
        if cursor.rowcount == 0:
            logger.warning("%s %s: this worker's reservation was taken back meanwhile; its rows stand",
                           self.name, key)

    def _record_failure(self, key: dict, transient: bool, message: str) -> int:
        """Insert a Failure row; return how many uncleared attempts have failed."""
        name, digest = self.table.full_table_name, registry.key_hash(key)
        history = registry.Failure & {"table_name": name, "key_hash": digest}
        registry.Failure.insert1(dict(
            table_name=name, key_hash=digest, attempt=len(history) + 1,
            job_key=json.loads(json.dumps(key, default=str)), worker_id=self.identity.worker_id,
            failed_time=registry.server_now(self.connection), kind="transient" if transient else "permanent",
            error_message=message[:2047]))
        return len(history & {"cleared": False})

    def _set_pending(self, keys, note: str, *, only_mine=False, owner=None, scheduled=None, connection=None) -> int:
        q = self.quote
        where = f"({self._condition(keys)})"
        if only_mine:
            owner = (self.identity.host, self.identity.pid)
        if owner:
            where += f" AND {q('status')}='reserved' AND {self._owned_by()}"
        args = [note[:2047]] + ([scheduled] if scheduled else []) + (list(owner) if owner else [])
        cursor = (connection or self.connection).query(
            f"UPDATE {self.jobs.full_table_name} SET {q('status')}='pending', {q('host')}='', {q('pid')}=0, "
            f"{q('connection_id')}=0, {q('reserved_time')}=NULL, {q('error_message')}=%s, "
            f"{q('scheduled_time')}=" + ("%s" if scheduled else "CURRENT_TIMESTAMP(3)") + f" WHERE {where}",
            args=args)
        return cursor.rowcount

    def _rollback(self) -> None:
        try:
            self.connection.cancel_transaction()
        except Exception:  # the connection itself is gone, and the server rolled back with it
            self.connection._in_transaction = False

    def _condition(self, keys) -> str:
        keys = [{name: key[name] for name in self.primary_key} for key in keys]
        return dj.condition.make_condition(self.jobs, keys, set())

    def _mine(self) -> dict:
        return {"host": self.identity.host, "pid": self.identity.pid}

    def _owned_by(self) -> str:
        """Return the SQL condition on the job's owner; it takes (host, pid) as query arguments."""
        return f"{self.quote('host')}=%s AND {self.quote('pid')}=%s"


def _call_make(table, key: dict, make_kwargs, version: str) -> None:
    """Call ``make()`` as DataJoint's own populate does (inserts allowed, upstream view, provenance)."""
    from datajoint import provenance

    cls = type(table)
    make = table._make_tuples if hasattr(table, "_make_tuples") else table.make
    cls._allow_insert = True
    table._upstream_key, table._upstream = dict(key), None
    token = provenance.set_ingesting(table.full_table_name, key, version)
    try:
        if inspect.isgeneratorfunction(make):  # tripartite make: fetch, compute, insert
            steps = make(dict(key), **(make_kwargs or {}))
            next(steps)
            result = next(steps)
            try:
                steps.send(result)
            except StopIteration:
                pass
        else:
            make(dict(key), **(make_kwargs or {}))
    finally:
        provenance.reset_ingesting(token)
        cls._allow_insert = False
        table._upstream_key, table._upstream = None, None
