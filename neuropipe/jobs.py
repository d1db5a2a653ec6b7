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
- ``run_batch`` is the same for many short jobs at once: it claims them inside one
  transaction (locked, so other workers skip them), makes them one after another and
  commits once: one durable commit for the batch;
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
from dataclasses import dataclass, field

from neuropipe import compat, failures, registry
from neuropipe.database import case_by_key, import_datajoint, key_in, retrying_declaration
from neuropipe.provenance import JobMeter, Recorder
from neuropipe.provenance.sidecar import ROW_ID

logger = logging.getLogger(__name__)
dj = import_datajoint()
Not = dj.condition.Not

SHORT_JOB_SECONDS = 0.1  # jobs shorter than this are made in batches, one commit per batch
BATCH_SECONDS = 0.5  # a batch holds about this much work: what a crash or a failed job makes redone
MAX_BATCH = 256


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


@dataclass
class BatchOutcome:
    """What :meth:`JobQueue.run_batch` did: keys made and committed, keys whose rows existed, a failure.

    ``failed`` holds at most one (key, error): the make that raised.  Its batch was rolled
    back (the other keys are pending again, for the next batch) and the key alone is
    reserved by this worker, for :meth:`JobQueue.fail`.
    """

    done: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    failed: list = field(default_factory=list)
    claimed: int = 0


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
        self._columns = ", ".join(self.quote(name) for name in self.primary_key)
        self._postgres = "postgres" in type(self.connection.adapter).__name__.lower()
        self.user = self.connection.get_user()
        self.recorder = retrying_declaration(lambda: Recorder(table, dict(
            worker_id=identity.worker_id, host=identity.host, pid=identity.pid))) if provenance else None
        self.typical_seconds = None  # a running mean of how long one job takes here
        self.batch_keys: list[dict] = []  # the keys of the latest batch (settled after a lost connection)

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
        new = (source - target).restrict(Not(self.jobs), semantic_check=False).proj()
        return self._queue(new.make_sql())

    def _queue(self, select: str) -> int:
        """Insert the keys ``select`` returns as pending jobs, in one statement on the server.

        (DataJoint's own insert would fetch every key to Python and send it back.)  Keys
        another worker queued meanwhile are passed over.  A plain read first: when nothing is
        new, as on most passes, nothing is written (no write lock on the job table).
        """
        if not self.connection.query(f"SELECT 1 FROM ({select}) AS new_keys LIMIT 1").fetchone():
            return 0
        q = self.quote
        columns = ", ".join(q(name) for name in self.primary_key)
        adapter = self.connection.adapter
        conflict = adapter.skip_duplicates_clause(self.jobs.full_table_name, self.primary_key)
        cursor = self.connection.query(
            f"INSERT INTO {self.jobs.full_table_name} ({columns}, {q('status')}, {q('priority')}) "
            f"SELECT {columns}, 'pending', %s FROM ({select}) AS new_keys{conflict}",
            args=(compat.settings_of(self.connection).jobs.default_priority,))
        return max(cursor.rowcount, 0)

    def claim(self, count: int = 1) -> list[dict]:
        """Reserve up to ``count`` pending jobs for this worker, atomically, visible as ``reserved``.

        Several workers may race for the same keys; each key goes to exactly one of them.  On
        PostgreSQL one ``UPDATE ... RETURNING`` over the jobs a locking read picks (skipping
        those another worker is taking), committed without waiting for the disk: a claim
        lost with a crashed server is only a job pending again.  On MySQL a plain read of a
        few candidates, then a conditional UPDATE.
        """
        if self._postgres:
            with HOLDINGS.lock:
                claimed = self._reserve_next(count)
                HOLDINGS.add(self.table.full_table_name, claimed)
            return claimed
        candidates = self.connection.query(self._next_pending_sql(4 * count), as_dict=True).fetchall()
        if not candidates:
            return []
        candidates = random.sample([dict(key) for key in candidates], min(count, len(candidates)))
        with HOLDINGS.lock:
            claimed = self._reserve(candidates)
            HOLDINGS.add(self.table.full_table_name, claimed)
        return claimed

    def _next_pending_sql(self, count: int, lock: bool = False) -> str:
        """Return the SELECT of the keys of the next ``count`` due pending jobs (locked, skipping locked ones)."""
        q = self.quote
        return (f"SELECT {self._columns} FROM {self.jobs.full_table_name} WHERE {q('status')}='pending' "
                f"AND {q('scheduled_time')} <= CURRENT_TIMESTAMP(3) ORDER BY {q('priority')}, {q('scheduled_time')} "
                f"LIMIT {int(count)}" + (" FOR UPDATE SKIP LOCKED" if lock else ""))

    def _reserve_next(self, count: int) -> list[dict]:
        """PostgreSQL: reserve the next ``count`` due pending jobs in one statement and one asynchronous commit."""
        try:
            cursor = self.connection.query(
                f"BEGIN; SET LOCAL synchronous_commit TO OFF; "
                f"UPDATE {self.jobs.full_table_name} SET {self._reservation} "
                f"WHERE ({self._columns}) IN ({self._next_pending_sql(count, lock=True)}) RETURNING {self._columns}",
                args=self._reservation_args, as_dict=True)
            claimed = [dict(key) for key in cursor.fetchall()]
            self.connection.query("COMMIT")
        except BaseException:
            self._rollback()
            raise
        return claimed

    @property
    def _reservation(self) -> str:
        """The SET clause that marks a job reserved by this worker (arguments: :attr:`_reservation_args`)."""
        q = self.quote
        return (f"{q('status')}='reserved', {q('host')}=%s, {q('pid')}=%s, {q('connection_id')}=%s, {q('user')}=%s, "
                f"{q('version')}=%s, {q('reserved_time')}=CURRENT_TIMESTAMP(3)")

    @property
    def _reservation_args(self) -> tuple:
        return (self.identity.host, self.identity.pid, self.connection.connection_id, self.user,
                self.identity.version)

    def _reserve(self, candidates: list[dict]) -> list[dict]:
        """Reserve those of ``candidates`` that are still pending; return them."""
        condition = self._condition(candidates)
        q = self.quote
        cursor = self.connection.query(
            f"UPDATE {self.jobs.full_table_name} SET {self._reservation} "
            f"WHERE {q('status')}='pending' AND {q('scheduled_time')} <= CURRENT_TIMESTAMP(3) AND ({condition})",
            args=self._reservation_args,
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

    def suggested_batch(self) -> int:
        """Return how many jobs to make per transaction, from how long jobs here took so far.

        One at a time (each claim visible as ``reserved`` while it runs) until jobs are known
        to be short; then batches of about :data:`BATCH_SECONDS` of work, where the commit
        would otherwise cost more than the job.
        """
        if self.typical_seconds is None or self.typical_seconds >= SHORT_JOB_SECONDS:
            return 1
        return int(min(MAX_BATCH, max(2, BATCH_SECONDS / max(self.typical_seconds, 1e-4))))

    def observe(self, seconds: float, jobs: int = 1) -> None:
        """Fold ``jobs`` jobs that took ``seconds`` in all into :attr:`typical_seconds`."""
        each = seconds / max(jobs, 1)
        self.typical_seconds = each if self.typical_seconds is None else 0.7 * self.typical_seconds + 0.3 * each

    def run_batch(self, count: int, keep_going=lambda: True) -> BatchOutcome:
        """Claim up to ``count`` pending jobs and make them in one transaction, committed once.

        The claim locks the jobs (``FOR UPDATE SKIP LOCKED``: other workers pass them by) and
        marks them reserved inside the transaction, so a worker that dies mid-batch leaves them
        pending, as if never claimed.  Every job reported done was committed, with its rows,
        its record and its job row, by the batch's one durable ``COMMIT``.

        Parameters
        ----------
        count : int
            Most jobs to claim.
        keep_going : callable
            Asked before each job; once it returns False the rest are released.

        Returns
        -------
        BatchOutcome

        Notes
        -----
        A make that raises rolls back the whole batch: the failed key is then reserved alone
        for :meth:`fail`, the others return to the queue and are made again by the next batch
        (at most :data:`BATCH_SECONDS` of work redone).
        """
        outcome = BatchOutcome()
        table, name = self.table(), self.table.full_table_name
        self.batch_keys = []
        try:
            self._begin()
            with HOLDINGS.lock:
                self.batch_keys = self._lock_pending(count)
                HOLDINGS.add(name, self.batch_keys)
            outcome.claimed = len(self.batch_keys)
            timings, records = self._make_batch(table, keep_going, outcome)
            self._complete_batch(table, timings, made=len(outcome.done), records=records)
            if records:
                self.recorder.write_rows(records)
            self.connection.commit_transaction()
        except _MakeFailed as failed:
            self._rollback()
            if isinstance(failed.error, dj.errors.LostConnectionError) or not compat.ping(self.connection):
                raise failed.error from None  # not the job's failure: the worker settles the batch on reconnection
            HOLDINGS.discard(name, [key for key in self.batch_keys if key is not failed.key])
            return self._settle_failed(failed, BatchOutcome(claimed=outcome.claimed))
        except BaseException:
            self._rollback()
            raise
        HOLDINGS.discard(name, self.batch_keys)  # done, found done, or released by a stopping worker
        return outcome

    def _make_batch(self, table, keep_going, outcome: BatchOutcome) -> tuple[list, list]:
        """Make the batch's jobs in turn (its rows exist: skipped); return their timings and provenance rows.

        Timings are (key, start, duration), made jobs first; a make that raises is
        :class:`_MakeFailed`.
        """
        existing = {_frozen(key) for key in self._keys_with_rows(self.batch_keys, self.connection)}
        cache, records, made, skipped = {}, [], [], []
        if self.recorder and self.batch_keys:
            self.recorder.prefetch(self.batch_keys, cache)
        for index, key in enumerate(self.batch_keys):
            if not keep_going():
                self._set_pending(self.batch_keys[index:], "released by a stopping worker", only_mine=True)
                break
            start = time.time()
            if _frozen(key) in existing:
                skipped.append((key, start, 0.0))
                continue
            meter = JobMeter() if self.recorder else None
            try:
                _call_make(table, key, None, self.identity.version)
            except Exception as error:
                raise _MakeFailed(key, error) from error
            if self.recorder:
                records.append(self.recorder.row(key, meter.finish(), cache))
            made.append((key, start, time.time() - start))
        outcome.done = [key for key, _, _ in made]
        outcome.skipped = [key for key, _, _ in skipped]
        return made + skipped, records

    def _settle_failed(self, failed: "_MakeFailed", outcome: BatchOutcome) -> BatchOutcome:
        """After a batch was rolled back for ``failed``: reserve its key alone and report it."""
        key, error = failed.key, failed.error
        name = self.table.full_table_name
        with HOLDINGS.lock:
            reserved = self._reserve([key])
        if not reserved:  # another worker took it meanwhile
            HOLDINGS.discard(name, [key])
        elif isinstance(error, dj.errors.DuplicateError):  # its rows were made by another worker meanwhile
            logger.warning("%s %s was made by another worker meanwhile; keeping theirs", self.name, key)
            self._mark_done([key], self.connection, note="made by another worker meanwhile")
            HOLDINGS.discard(name, [key])
            outcome.skipped.append(key)
        else:
            outcome.failed.append((key, error))
        return outcome

    def _begin(self) -> None:
        """Start a transaction in one round trip (DataJoint's own first pings the server).

        On MySQL the batch reads committed data: its locking read then locks only the jobs
        it takes, not the gaps between them (which would hold up other workers' queueing).
        """
        if not self._postgres:
            self.connection.query("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
            self.connection.query("START TRANSACTION")
        else:
            self.connection.query("BEGIN")
        compat.set_in_transaction(self.connection, True)

    def _lock_pending(self, count: int) -> list[dict]:
        """Within the transaction: lock up to ``count`` due pending jobs and reserve them for this worker."""
        if self._postgres:
            cursor = self.connection.query(
                f"UPDATE {self.jobs.full_table_name} SET {self._reservation} WHERE ({self._columns}) IN "
                f"({self._next_pending_sql(count, lock=True)}) RETURNING {self._columns}",
                args=self._reservation_args, as_dict=True)
            return [dict(key) for key in cursor.fetchall()]
        keys = self.connection.query(self._next_pending_sql(count, lock=True), as_dict=True).fetchall()
        return self._reserve([dict(key) for key in keys]) if keys else []

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
        records = []
        try:
            self._begin()
            if self._keys_with_rows([key], self.connection):
                outcome = "skipped"
            else:
                meter = JobMeter()
                _call_make(table, key, make_kwargs, self.identity.version)
                records = [self.recorder.row(key, meter.finish())] if self.recorder else []
                outcome = "done"
            self._complete_batch(table, [(key, start, time.time() - start)], made=outcome == "done", records=records)
            if outcome == "done" and records:
                self.recorder.write_rows(records)
            self.connection.commit_transaction()
        except dj.errors.DuplicateError:
            self._rollback()
            logger.warning("%s %s was made by another worker meanwhile; keeping theirs", self.name, key)
            self._begin()
            self._complete_batch(table, [(key, start, time.time() - start)], made=0)
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

    def _complete_batch(self, table, timings: list, made: int, records=()) -> None:
        """Within the jobs' transaction: stamp the made rows, then mark each job 'success', one statement each.

        ``timings`` holds (key, start, duration) per job; the first ``made`` were made here
        (the rest were found made already: nothing of theirs is stamped).  ``records`` are
        the made rows' provenance records, in the same order: their ids go into the rows'
        ``_row_id`` in the same ``UPDATE`` as DataJoint's job metadata.
        """
        if not timings:
            return
        q = self.quote
        keys = [key for key, _, _ in timings]
        durations, duration_args = self._case(keys, [duration for _, _, duration in timings])
        where, where_args = self._key_in(keys)
        if made:
            self._stamp_rows(table, timings[:made], records)
        owner = (self.identity.host, self.identity.pid)
        if compat.settings_of(self.connection).jobs.keep_completed:
            cursor = self.connection.query(
                f"UPDATE {self.jobs.full_table_name} SET {q('status')}='success', "
                f"{q('completed_time')}=CURRENT_TIMESTAMP(3), {q('duration')}={durations}, {q('error_message')}='' "
                f"WHERE {where} AND {self._owned_by()}", args=(*duration_args, *where_args, *owner))
        else:
            cursor = self.connection.query(f"DELETE FROM {self.jobs.full_table_name} WHERE {where} AND "
                                           f"{self._owned_by()}", args=(*where_args, *owner))
        if cursor.rowcount != len(keys):
            logger.warning("%s: %d of %d reservations were taken back meanwhile; their rows stand",
                           self.name, len(keys) - cursor.rowcount, len(keys))

    def _stamp_rows(self, table, timings: list, records) -> None:
        """Write the made rows' hidden columns in one ``UPDATE``: DataJoint's job metadata, and provenance ids.

        The job metadata (``_job_start_time``, ``_job_duration``, ``_job_version``) where the
        table has it (``jobs.add_job_metadata``); the ids of ``records`` where there are any.
        """
        keys = [key for key, _, _ in timings]
        assignments, args = [], []
        if compat.has_job_metadata(table):
            starts, start_args = self._case(keys, [datetime.datetime.fromtimestamp(start) for _, start, _ in timings])
            durations, duration_args = self._case(keys, [duration for _, _, duration in timings])
            assignments += [f"_job_start_time={starts}", f"_job_duration={durations}", "_job_version=%s"]
            args += [*start_args, *duration_args, self.identity.version[:64]]
        if records:
            ids, id_args = self._case(keys, [record["row_id"] for record in records])
            assignments.append(f"{self.quote(ROW_ID)}={ids}")
            args += id_args
        if assignments:
            where, where_args = self._key_in(keys)
            self.connection.query(f"UPDATE {table.full_table_name} SET {', '.join(assignments)} WHERE {where}",
                                  args=(*args, *where_args))

    def _key_in(self, keys) -> tuple[str, list]:
        """Return ``(key columns) IN ((...), ...)`` for ``keys`` and its query arguments."""
        return key_in(self.connection, self.primary_key, keys)

    def _case(self, keys, values) -> tuple[str, list]:
        """Return a CASE expression that is ``values[i]`` on the row of ``keys[i]``, and its arguments."""
        return case_by_key(self.connection, self.primary_key, keys, values)

    def _mark_done(self, keys, connection, note: str) -> None:
        """Mark this worker's reservations of ``keys`` done (jobs whose rows exist already)."""
        q = self.quote
        where = f"({self._condition(keys)}) AND {q('status')}='reserved' AND {self._owned_by()}"
        owner = (self.identity.host, self.identity.pid)
        if compat.settings_of(self.connection).jobs.keep_completed:
            connection.query(f"UPDATE {self.jobs.full_table_name} SET {q('status')}='success', "
                             f"{q('completed_time')}=CURRENT_TIMESTAMP(3), {q('error_message')}=%s WHERE {where}",
                             args=(note[:2047], *owner))
        else:
            connection.query(f"DELETE FROM {self.jobs.full_table_name} WHERE {where}", args=owner)

    def _keys_with_rows(self, keys, connection) -> list[dict]:
        """Return those of ``keys`` for which the table holds rows."""
        if not keys:
            return []
        where, args = self._key_in(keys)
        found = connection.query(f"SELECT DISTINCT {self._columns} FROM {self.table.full_table_name} WHERE {where}",
                                 args=args, as_dict=True).fetchall()
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
            compat.set_in_transaction(self.connection, False)

    def _condition(self, keys) -> str:
        keys = [{name: key[name] for name in self.primary_key} for key in keys]
        return dj.condition.make_condition(self.jobs, keys, set())

    def _mine(self) -> dict:
        return {"host": self.identity.host, "pid": self.identity.pid}

    def _owned_by(self) -> str:
        """Return the SQL condition on the job's owner; it takes (host, pid) as query arguments."""
        return f"{self.quote('host')}=%s AND {self.quote('pid')}=%s"


class _MakeFailed(Exception):
    """A make in a batch raised: the batch is rolled back, then this key is settled alone."""

    def __init__(self, key: dict, error: BaseException):
        super().__init__(str(error))
        self.key, self.error = key, error


def _call_make(table, key: dict, make_kwargs, version: str) -> None:
    """Call ``make()`` as DataJoint's own populate does (inserts allowed, upstream view, provenance)."""
    from datajoint import provenance

    make = compat.make_method(table)
    compat.allow_inserts(table, key)
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
        compat.allow_inserts(table, None)
