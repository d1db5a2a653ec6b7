"""Many short jobs in one transaction: one durable commit for the batch.

Where a job takes less time than a durable commit, committing each one alone makes the disk
the bottleneck.  :class:`Batches` (a part of :class:`~neuropipe.worker.jobs.JobQueue`) claims
several pending jobs inside one transaction, locking them so other workers pass them by,
makes them in turn and commits once.  A worker that dies mid-batch leaves them pending, as if
never claimed; a make that raises rolls the batch back and is settled alone.  The batch size
follows measured job durations (:meth:`Batches.suggested_batch`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from neuropipe import compat
from neuropipe.database import import_datajoint
from neuropipe.provenance import JobMeter
from neuropipe.worker.holdings import HOLDINGS, frozen_key
from neuropipe.worker.make import call_make

dj = import_datajoint()

SHORT_JOB_SECONDS = 0.1  # jobs shorter than this are made in batches, one commit per batch
BATCH_SECONDS = 0.5  # a batch holds about this much work: what a crash or a failed job makes redone
MAX_BATCH = 256


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


class _MakeFailed(Exception):
    """A make in a batch raised: the batch is rolled back, then this key is settled alone."""

    def __init__(self, key: dict, error: BaseException):
        super().__init__(str(error))
        self.key, self.error = key, error


class Batches:
    """The batch methods of :class:`~neuropipe.worker.jobs.JobQueue` (which provides the claim and settle steps)."""

    typical_seconds: float | None  # a running mean of how long one job takes here
    batch_keys: list  # the keys of the latest batch (settled after a lost connection)

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
            self._complete(table, timings, made=len(outcome.done), records=records)
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
        existing = {frozen_key(key) for key in self._keys_with_rows(self.batch_keys, self.connection)}
        cache, records, made, skipped = {}, [], [], []
        if self.recorder and self.batch_keys:
            self.recorder.prefetch(self.batch_keys, cache)
        for index, key in enumerate(self.batch_keys):
            if not keep_going():
                self._set_pending(self.batch_keys[index:], "released by a stopping worker", only_mine=True)
                break
            start = time.time()
            if frozen_key(key) in existing:
                skipped.append((key, start, 0.0))
                continue
            meter = JobMeter() if self.recorder else None
            try:
                call_make(table, key, None, self.identity.version)
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
        elif isinstance(error, dj.errors.DuplicateError):
            self._keep_theirs(key)
            HOLDINGS.discard(name, [key])
            outcome.skipped.append(key)
        else:
            outcome.failed.append((key, error))
        return outcome

    def _lock_pending(self, count: int) -> list[dict]:
        """Within a transaction (a batch's, or a claim's own): lock up to ``count`` due pending jobs, reserve them."""
        if self._postgres:
            cursor = self.connection.query(self._reserve_next_sql(count), args=self._reservation_args, as_dict=True)
            return [dict(key) for key in cursor.fetchall()]
        keys = self.connection.query(self._next_pending_sql(count, lock=True), as_dict=True).fetchall()
        return self._reserve([dict(key) for key in keys]) if keys else []
