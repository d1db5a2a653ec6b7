"""One table's job queue, on DataJoint's own job table (``Table().jobs``).

:class:`JobQueue` adds what a fleet of workers needs to DataJoint's per-table job table,
and keeps every state in that table so what DataJoint users already query shows the truth:

- ``refresh`` queues new keys in one bulk insert (and re-queues finished keys whose rows
  were deleted);
- ``claim`` reserves one or several pending keys in a short transaction of its own, passing
  by the jobs other workers are taking;
- ``run`` calls ``make()`` and marks the job done *in the same transaction*, so a job is
  never done without its rows nor its rows without the job done (with the claim, two
  commits per job where DataJoint's populate makes four), and a worker that lost its
  reservation while paused cannot create a duplicate or an error row;
- ``run_batch`` (:mod:`~neuropipe.worker.batch`) is the same for many short jobs at once:
  it claims them inside one transaction (locked, so other workers skip them), makes them
  one after another and commits once: one durable commit for the batch;
- ``fail`` records the attempt in :class:`~neuropipe.worker.registry.Failure` and either
  re-queues the job with backoff (transient failures) or marks it ``error`` (permanent);
- ``release`` and ``reset_orphans`` hand reservations back to the queue;
- ``hand_back_strays`` settles the reservations that carry this process's identity but that
  no worker of this process holds any more (a claim whose reply, or a completion whose
  ``COMMIT`` reply, was lost with the connection): back to ``pending``, or ``success`` where
  the rows were in fact committed.

A reservation's identity is the host and pid of the process that made it; what that
process holds is kept in :data:`~neuropipe.worker.holdings.HOLDINGS`, so one process may
run several workers.
"""

from __future__ import annotations

import datetime
import json
import logging
import time
import traceback

from neuropipe import compat
from neuropipe.database import case_by_key, import_datajoint, key_in, retrying_declaration
from neuropipe.provenance import JobMeter, Recorder
from neuropipe.provenance.sidecar import ROW_ID
from neuropipe.worker import failures, registry
from neuropipe.worker.batch import Batches
from neuropipe.worker.holdings import HOLDINGS, Identity, frozen_key
from neuropipe.worker.make import call_make

logger = logging.getLogger(__name__)
dj = import_datajoint()
Not = dj.condition.Not

class JobQueue(Batches):
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

        Several workers may race for the same keys; each key goes to exactly one of them.  A
        short transaction of its own takes the next due pending jobs with a locking read that
        skips those another worker is taking (a claim in progress, or a batch whose
        transaction is open), reserves them and commits: a claim never waits for another
        worker's jobs.  On PostgreSQL in one ``UPDATE ... RETURNING``, committed without
        waiting for the disk (a claim lost with a crashed server is only a job pending again).
        """
        with HOLDINGS.lock:
            claimed = self._reserve_next(count)
            HOLDINGS.add(self.table.full_table_name, claimed)
        return claimed

    def _next_pending_sql(self, count: int, lock: bool = False) -> str:
        """Return the SELECT of the keys of the next ``count`` due pending jobs (locked, skipping locked ones)."""
        q = self.quote
        return (f"SELECT {self._columns} FROM {self.jobs.full_table_name} WHERE {q('status')}='pending' "
                f"AND {q('scheduled_time')} <= CURRENT_TIMESTAMP(3) ORDER BY {q('priority')}, {q('scheduled_time')} "
                f"LIMIT {int(count)}" + (" FOR UPDATE SKIP LOCKED" if lock else ""))

    def _reserve_next(self, count: int) -> list[dict]:
        """Reserve the next ``count`` due pending jobs, passing by locked ones, in a transaction of their own."""
        try:
            if self._postgres:
                statement = "BEGIN; SET LOCAL synchronous_commit TO OFF; " + self._reserve_next_sql(count)
                cursor = self.connection.query(statement, args=self._reservation_args, as_dict=True)
                claimed = [dict(key) for key in cursor.fetchall()]
                self.connection.query("COMMIT")
            else:
                self._begin()
                claimed = self._lock_pending(count)
                self.connection.commit_transaction()
        except BaseException:
            self._rollback()
            raise
        return claimed

    def _reserve_next_sql(self, count: int) -> str:
        """PostgreSQL: the ``UPDATE ... RETURNING`` that reserves the next ``count`` due pending jobs.

        Its locking read skips the jobs another worker is taking.  Arguments: :attr:`_reservation_args`.
        """
        return (f"UPDATE {self.jobs.full_table_name} SET {self._reservation} "
                f"WHERE ({self._columns}) IN ({self._next_pending_sql(count, lock=True)}) RETURNING {self._columns}")

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

    def _begin(self) -> None:
        """Start a transaction in one round trip (DataJoint's own first pings the server).

        On MySQL the transaction reads committed data: the locking read of a claim or a
        batch then locks only the jobs it takes, not the gaps between them (which would hold
        up other workers' queueing, and set two claims waiting on each other's gaps).
        """
        if not self._postgres:
            self.connection.query("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
            self.connection.query("START TRANSACTION")
        else:
            self.connection.query("BEGIN")
        compat.set_in_transaction(self.connection, True)

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
        The key stays held (see :class:`~neuropipe.worker.holdings.Holdings`) until the caller calls :meth:`forget`,
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
                call_make(table, key, make_kwargs, self.identity.version)
                records = [self.recorder.row(key, meter.finish())] if self.recorder else []
                outcome = "done"
            self._complete(table, [(key, start, time.time() - start)], made=outcome == "done", records=records)
            if outcome == "done" and records:
                self.recorder.write_rows(records)
            self.connection.commit_transaction()
        except dj.errors.DuplicateError:
            self._rollback()
            self._keep_theirs(key)
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

    def _complete(self, table, timings: list, made: int, records=()) -> None:
        """Within the jobs' transaction: stamp the made rows, then mark the jobs done, one statement each.

        ``timings`` holds (key, start, duration) per job; the first ``made`` were made here
        (the rest were found made already: nothing of theirs is stamped).  ``records`` are
        the made rows' provenance records, in the same order: their ids go into the rows'
        ``_row_id`` in the same ``UPDATE`` as DataJoint's job metadata.
        """
        if not timings:
            return
        keys = [key for key, _, _ in timings]
        if made:
            self._stamp_rows(table, timings[:made], records)
        durations = self._case(keys, [duration for _, _, duration in timings])
        finished = self._mark_done(keys, self.connection, durations=durations)
        if finished != len(keys):
            logger.warning("%s: %d of %d reservations were taken back meanwhile; their rows stand",
                           self.name, len(keys) - finished, len(keys))

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

    def _mark_done(self, keys, connection, *, note: str = "", durations=None) -> int:
        """Mark this worker's reservations of ``keys`` done; return how many it still held.

        Done is ``success`` (with the note, and each job's duration where ``durations``, a
        :meth:`_case` expression, gives it), or the job row deleted where DataJoint is set
        not to keep completed jobs (``jobs.keep_completed``).
        """
        q = self.quote
        where, where_args = self._key_in(keys)
        where = f"{where} AND {q('status')}='reserved' AND {self._owned_by()}"
        where_args = [*where_args, self.identity.host, self.identity.pid]
        if not compat.settings_of(self.connection).jobs.keep_completed:
            return connection.query(f"DELETE FROM {self.jobs.full_table_name} WHERE {where}", args=where_args).rowcount
        duration, duration_args = (f", {q('duration')}={durations[0]}", durations[1]) if durations else ("", [])
        return connection.query(
            f"UPDATE {self.jobs.full_table_name} SET {q('status')}='success', "
            f"{q('completed_time')}=CURRENT_TIMESTAMP(3), {q('error_message')}=%s{duration} WHERE {where}",
            args=(note[:2047], *duration_args, *where_args)).rowcount

    def _keep_theirs(self, key: dict) -> None:
        """Settle a job whose rows another worker made meanwhile (its insert was a duplicate): theirs stand."""
        logger.warning("%s %s was made by another worker meanwhile; keeping theirs", self.name, key)
        self._mark_done([key], self.connection, note="made by another worker meanwhile")

    def _keys_with_rows(self, keys, connection) -> list[dict]:
        """Return those of ``keys`` for which the table holds rows."""
        if not keys:
            return []
        where, args = self._key_in(keys)
        found = connection.query(f"SELECT DISTINCT {self._columns} FROM {self.table.full_table_name} WHERE {where}",
                                 args=args, as_dict=True).fetchall()
        found = {frozen_key(key) for key in found}
        return [key for key in keys if frozen_key({name: key[name] for name in self.primary_key}) in found]

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


