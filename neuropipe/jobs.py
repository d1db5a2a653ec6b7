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
- ``release`` and ``reset_orphans`` hand reservations back to the queue;
- ``hand_back_strays`` settles the reservations that carry this process's identity but that
  no worker of this process holds any more (a claim whose reply, or a completion whose
  ``COMMIT`` reply, was lost with the connection): back to ``pending``, or ``success`` where
  the rows were in fact committed.

A reservation's identity is the host and pid of the process that made it; what that
process holds is kept in :data:`HOLDINGS`, so one process may run several workers.
"""

from __future__ import annotations

import datetime
import inspect
import json
import logging
import random
import threading
import time
import traceback
from dataclasses import dataclass

from neuropipe import failures, registry
from neuropipe.database import import_datajoint, retrying_declaration
from neuropipe.provenance import JobMeter, Recorder

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


class Holdings:
    """The jobs this process holds: claimed by one of its workers and not yet settled.

    A reservation carrying this process's identity that is not held here is a *stray*: the
    process lost track of it (for example the reply to its claim never arrived), so nobody
    would ever finish or release it.  Claims hold :attr:`lock` from their ``UPDATE`` until
    the keys are recorded, and the hand-back of strays holds it from its last look at the
    holdings to its ``UPDATE``, so a fresh claim is never taken for a stray.
    """

    def __init__(self):
        self.lock = threading.Lock()
        self._keys: dict[str, set] = {}

    def add(self, table: str, keys) -> None:
        """Record ``keys`` of ``table`` as held."""
        self._keys.setdefault(table, set()).update(map(_frozen, keys))

    def discard(self, table: str, keys) -> None:
        """Forget ``keys`` of ``table`` (finished, released, or lost track of)."""
        self._keys.get(table, set()).difference_update(map(_frozen, keys))

    def holds(self, table: str, key: dict) -> bool:
        """Return whether a worker of this process holds ``key`` of ``table``."""
        return _frozen(key) in self._keys.get(table, ())


HOLDINGS = Holdings()


def _frozen(key: dict) -> tuple:
    return tuple(sorted((name, str(value)) for name, value in key.items()))


class JobQueue:
    """The job queue of one auto-populated table, as one worker sees it.

    Parameters
    ----------
    table : table class
        A ``dj.Computed`` or ``dj.Imported`` class, bound to a schema.
    identity : Identity
        The worker that claims jobs through this queue.
    provenance : bool
        Write each made row's provenance (:mod:`neuropipe.provenance`) with it.
    """

    def __init__(self, table, identity: Identity, *, provenance: bool = True):
        self.table = table
        self.identity = identity
        self.jobs = retrying_declaration(lambda: table().jobs)
        self.connection = self.jobs.connection
        self.quote = self.connection.adapter.quote_identifier
        self.primary_key = list(self.jobs.primary_key)
        self.user = self.connection.get_user()
        self.recorder = retrying_declaration(lambda: Recorder(table, dict(
            worker_id=identity.worker_id, host=identity.host, pid=identity.pid))) if provenance else None

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
        with HOLDINGS.lock:
            claimed = self._reserve(candidates)
            HOLDINGS.add(self.table.full_table_name, claimed)
        return claimed

    def _reserve(self, candidates: list[dict]) -> list[dict]:
        """Reserve those of ``candidates`` that are still pending; return them."""
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
        reserved = (self.jobs & candidates & self._mine() & "status='reserved'").proj().to_dicts()
        return [key for key in reserved if not HOLDINGS.holds(self.table.full_table_name, key)]

    def release(self, keys=None, note: str = "released by a stopping worker") -> None:
        """Hand this worker's reservations of ``keys`` (default: all of them) back to the queue.

        The keys are no longer held afterwards, even where the update fails with the
        connection: the reservation is then a stray, which :meth:`hand_back_strays` settles.
        """
        keys = list((self.jobs & self._mine() & "status='reserved'").proj().to_dicts() if keys is None else keys)
        try:
            if keys:
                self._set_pending(keys, note, only_mine=True)
        finally:
            self.forget(keys)

    def forget(self, keys) -> None:
        """Stop holding ``keys`` without touching the database (their reservations become strays)."""
        HOLDINGS.discard(self.table.full_table_name, keys)

    def hand_back_strays(self, connection=None, *, wait: bool = True) -> tuple[list, list]:
        """Settle this process's reservations that none of its workers holds.

        Each stray goes back to ``pending``, or to ``success`` where the table holds its rows
        (a ``COMMIT`` whose reply was lost may have succeeded: the rows tell, not a guess).

        Parameters
        ----------
        connection : datajoint.Connection, optional
            Default: the table's own (the heartbeat thread passes its own).
        wait : bool
            Wait for a claim in progress; if False, return at once when one is (the
            heartbeat tries again at its next sweep rather than stall).

        Returns
        -------
        tuple of list
            The keys returned to the queue and the keys found committed.
        """
        connection = connection or self.connection
        q = self.quote
        columns = ", ".join(q(name) for name in self.primary_key)
        mine = connection.query(
            f"SELECT {columns} FROM {self.jobs.full_table_name} WHERE {q('status')}='reserved' AND {self._owned_by()}",
            args=(self.identity.host, self.identity.pid), as_dict=True).fetchall()
        name = self.table.full_table_name
        if not [key for key in mine if not HOLDINGS.holds(name, key)] or not HOLDINGS.lock.acquire(blocking=wait):
            return [], []
        try:
            strays = [dict(key) for key in mine if not HOLDINGS.holds(name, key)]
            committed = self._keys_with_rows(strays, connection)
            returned = [key for key in strays if key not in committed]
            if committed:
                self._mark_done(committed, connection, note="its rows were committed before the connection was lost")
            if returned:
                self._set_pending(returned, "released: its worker lost track of it with its database connection",
                                  only_mine=True, connection=connection)
        finally:
            HOLDINGS.lock.release()
        for key in returned:
            logger.warning("%s %s: handed back (its reservation outlived the database session that made it)",
                           self.name, key)
        return returned, committed

    def outcome(self, key: dict) -> str:
        """Return what became of a job that was interrupted with the connection.

        ``'committed'`` where its rows exist and its job row shows this worker completed
        it, else ``'not committed'``.
        """
        q = self.quote
        row = self.connection.query(
            f"SELECT {q('status')}, {q('host')}, {q('pid')} FROM {self.jobs.full_table_name} "
            f"WHERE {self._condition([key])}").fetchone()
        completed = row is None or (row[0] == "success" and (row[1], row[2]) == (self.identity.host, self.identity.pid))
        return "committed" if completed and self._keys_with_rows([key], self.connection) else "not committed"

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

        Notes
        -----
        The key stays held (see :class:`Holdings`) until the caller calls :meth:`forget`,
        after it has recorded a failure: the heartbeat must not hand back a job that is
        about to be re-queued with backoff or marked ``error``.
        """
        table = self.table()
        start = time.time()
        try:
            self.connection.start_transaction()
            if table & key:
                outcome = "skipped"
            else:
                meter = JobMeter()
                _call_make(table, key, make_kwargs, self.identity.version)
                if self.recorder:
                    self.recorder.write(key, meter.finish())
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

        Runs on ``connection`` (the heartbeat thread's), not on the table's own.  Only
        reservations made before ``is_orphan.as_of`` (the server time of the judgement) are
        reset: a worker that came back since may already have claimed afresh.
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
                count += self._set_pending([key], note, owner=(job["host"], job["pid"]), connection=connection,
                                           reserved_before=is_orphan.as_of)
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

    def _mark_done(self, keys, connection, note: str) -> None:
        """Mark this worker's reservations of ``keys`` done (jobs whose rows exist already)."""
        q = self.quote
        where = f"({self._condition(keys)}) AND {q('status')}='reserved' AND {self._owned_by()}"
        owner = (self.identity.host, self.identity.pid)
        if self.connection._config.jobs.keep_completed:
            connection.query(f"UPDATE {self.jobs.full_table_name} SET {q('status')}='success', "
                             f"{q('completed_time')}=CURRENT_TIMESTAMP(3), {q('error_message')}=%s WHERE {where}",
                             args=(note[:2047], *owner))
        else:
            connection.query(f"DELETE FROM {self.jobs.full_table_name} WHERE {where}", args=owner)

    def _keys_with_rows(self, keys, connection) -> list[dict]:
        """Return those of ``keys`` for which the table holds rows."""
        if not keys:
            return []
        q = self.quote
        columns = ", ".join(q(name) for name in self.primary_key)
        found = connection.query(f"SELECT DISTINCT {columns} FROM {self.table.full_table_name} "
                                 f"WHERE {self._condition(keys)}", as_dict=True).fetchall()
        found = {_frozen(key) for key in found}
        return [key for key in keys if _frozen({name: key[name] for name in self.primary_key}) in found]

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

    def _set_pending(self, keys, note: str, *, only_mine=False, owner=None, scheduled=None, connection=None,
                     reserved_before=None) -> int:
        q = self.quote
        where = f"({self._condition(keys)})"
        if only_mine:
            owner = (self.identity.host, self.identity.pid)
        if owner:
            where += f" AND {q('status')}='reserved' AND {self._owned_by()}"
        if reserved_before is not None:
            where += f" AND {q('reserved_time')} < %s"
        args = ([note[:2047]] + ([scheduled] if scheduled else []) + (list(owner) if owner else [])
                + ([reserved_before] if reserved_before is not None else []))
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
