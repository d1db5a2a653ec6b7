"""Workers: fill every auto-populated table of a pipeline, in dependency order.

The schema is the DAG and DataJoint's per-table job tables are the queue.  A
:class:`Worker` walks the Imported and Computed tables it serves, upstream first; for
each it queues new keys, claims jobs atomically and runs them through
:class:`~neuropipe.worker.jobs.JobQueue`.  It registers itself in the worker registry and
heartbeats from a thread of its own, so that other workers can tell a slow job from a dead
worker: a job whose worker stopped heartbeating for two intervals, or whose process is gone
from this host, goes back to the queue.  The first SIGTERM/SIGINT finishes the current job
and stops; a second one rolls it back and stops at once.  The demo and notebooks drain the
graph through this same loop.

A lost database connection (a server restart, a killed connection) is retried with capped
backoff, one log line per attempt.  Whatever the worker held when the connection went is
settled on its first successful contact with the server, whichever code path reconnected
(neuropipe's or DataJoint's own automatic reconnect): each job goes back to the queue, or
counts as done where its rows were in fact committed.  As a second line of defence the
heartbeat hands back any reservation carrying this process's identity that no worker of the
process holds (see :class:`~neuropipe.worker.jobs.Holdings`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
import uuid

from neuropipe import __version__
from neuropipe.database import open_like
from neuropipe.worker import failures, registry
from neuropipe.worker.contact import DatabaseContact
from neuropipe.worker.holdings import Identity, host_name
from neuropipe.worker.jobs import JobQueue
from neuropipe.worker.options import TableTally, WorkerOptions
from neuropipe.worker.resources import Resources, local_resources, return_free_memory

LONG_JOB_SECONDS = 0.25  # after a job this long, free heap pages go back to the OS (about 1 ms)
logger = logging.getLogger(__name__)


class StopNow(BaseException):
    """Raised in the main thread by a second stop signal: abandon the current job."""


def run_worker(tables, **options) -> dict[str, TableTally]:
    """Serve ``tables`` with a :class:`Worker` in this process; return its tallies.

    Keyword arguments are :class:`WorkerOptions` fields: ``max_idle=0`` drains the graph
    once and returns.  :func:`neuropipe.populate` is the notebook's way to the same loop.
    """
    return Worker(tables, WorkerOptions.create(**options)).serve()


class Worker:
    """One worker process serving some tables.

    Parameters
    ----------
    tables : list of table classes
        Upstream first (:func:`pipeline_tables`).
    options : WorkerOptions
    resources : Resources, optional
        What this worker offers; default: the host's memory, no GPU.

    Notes
    -----
    :meth:`serve` binds the worker registry (:mod:`neuropipe.worker.registry`) to the configured
    prefix unless it is bound already, on the tables' connection.
    """

    def __init__(self, tables, options: WorkerOptions = WorkerOptions(), resources: Resources | None = None,
                 progress=None):
        self.tables = list(tables)
        self.options = options
        self.progress = progress  # called with the tallies after each job or batch (a notebook's progress line)
        self.resources = resources or local_resources()
        self.identity = Identity(uuid.uuid4().hex, host_name(), os.getpid(), f"neuropipe {__version__}")
        self.tally = {table.__name__: TableTally(table.__name__) for table in self.tables}
        self.stopping = False
        self._signals = 0
        self._heartbeat = None
        self._held: list = []  # (queue, key) claimed but not yet run
        self._interrupted = []  # (queue, key) of the jobs the lost connection cut short

    # --- lifecycle ----------------------------------------------------------------------

    def serve(self) -> dict[str, TableTally]:
        """Work until idle for ``max_idle``, ``max_jobs`` are done, or a stop signal."""
        if not self.tables:
            return self.tally
        connection = self.tables[0].connection
        self._contact = DatabaseContact(connection, self.options.reconnect_cap)
        failures.keep_trying(lambda: self._register(connection), patience=self.options.wait_for_database,
                             cap=self.options.reconnect_cap, what="at start")
        self._heartbeat = registry.Heartbeat(self.identity.worker_id, self.options.heartbeat,
                                             lambda: open_like(connection), self._sweep_orphans)
        self._heartbeat.start()
        logger.info("worker %s (%s:%d) serving %s", self.identity.worker_id[:8], self.identity.host,
                    self.identity.pid, ", ".join(q.name for q in self.queues) or "no tables")
        restore = self._install_signal_handlers()
        try:
            self._loop()
        except StopNow:
            logger.warning("stopped at once; the current job was rolled back and released")
        finally:
            self._shutdown(connection)
            restore()
        return self.tally

    def _loop(self) -> None:
        idle_since = time.monotonic()
        while not self.stopping:
            try:
                self._settle_if_reconnected()
                worked = self._pass()
            except StopNow:
                raise
            except Exception as error:
                self._nap(self._wait_after(error))
                continue
            if self._budget_spent():
                return
            if worked:
                idle_since = time.monotonic()
                continue
            if self.options.max_idle is not None and time.monotonic() - idle_since >= self.options.max_idle:
                return
            self._nap(self.options.poll)

    def _nap(self, seconds: float) -> None:
        """Sleep up to ``seconds``, waking within 0.1 s of a stop signal.

        The signal handlers only set flags: one that took a lock (``Event.set``) could
        deadlock against the main thread it interrupted while that held the same lock.
        """
        deadline = time.monotonic() + seconds
        while not self.stopping and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, 0.1))

    def _wait_after(self, error: Exception) -> float:
        """Log a lost or failing database; return how long to wait before the next attempt.

        On the first attempt the worker reconnects at once (a killed connection, a quick
        restart); after that it waits, 1 s and doubling up to ``reconnect_cap``.  Errors that
        are neither transient nor a lost connection are bugs: they propagate.
        """
        contact = self._contact
        lost_connection = contact.lost() or not contact.alive()
        if not lost_connection and not failures.is_transient(error):
            raise error
        wait = contact.lose()
        if contact.attempts == 1 and lost_connection and contact.try_reach():
            logger.warning("database connection lost (%s); reconnected", failures.describe(error))
            return 0.0
        logger.warning("database %s (%s); attempt %d, retrying in %.1f s",
                       "unreachable" if lost_connection else "error", failures.describe(error), contact.attempts, wait)
        return wait

    def _pass(self) -> bool:
        """One sweep over the tables, upstream first; return whether any job ran."""
        worked = False
        for queue in self.queues:
            if self.stopping:
                break
            queue.refresh(self.options.restrictions)
            while not self.stopping and not self._budget_spent():
                self._settle_if_reconnected()
                batch = self._batch_size(queue)
                if batch > 1:
                    if not self._run_batch(queue, batch):
                        break
                    worked = True
                    continue
                keys = queue.claim(1)
                self._held = [(queue, key) for key in keys]
                if self._settle_if_reconnected():  # the claim reconnected: what it reserved was handed back
                    continue
                if not keys:
                    break
                while self._held and not self.stopping and not self._budget_spent():
                    self._run(*self._held.pop(0))
                    worked = True
                self._release_held()
        return worked

    def _settle_if_reconnected(self) -> bool:
        """On the first contact after a lost connection, settle what the worker held; return whether it did.

        Raises whatever the server does while it is still unreachable; the loop then waits
        and calls again.
        """
        contact = self._contact
        if not contact.lost():
            return False
        contact.reach()
        for queue, key in self._held:
            queue.forget([key])
        self._held = []
        committed = 0
        for queue, key in self._interrupted:
            if queue.outcome(key) == "committed":
                committed += 1
                self.tally[queue.name].made += 1
                logger.info("%s %s was committed before the connection was lost", queue.name, key)
            queue.forget([key])
        returned = 0
        for queue in self.queues:
            back, done = queue.hand_back_strays()
            returned, committed = returned + len(back), committed + len(done)
        self._interrupted = []
        outage = contact.restored()
        registry.update_connection(self.identity.worker_id, contact.connection.connection_id, contact.connection)
        logger.info("reconnected to the database after %.1f s; %d job(s) handed back, %d found committed",
                    outage, returned, committed)
        return True

    def _budget_spent(self) -> bool:
        if self.options.max_jobs is None:
            return False
        return sum(t.made + t.skipped + t.failed for t in self.tally.values()) >= self.options.max_jobs

    def _run(self, queue: JobQueue, key: dict) -> None:
        """Make one claimed job; record its failure, or keep it for settling when the connection went."""
        start = time.perf_counter()
        try:
            with self._current(queue, key):
                outcome = queue.run(key)
        except StopNow:
            queue.release([key])
            raise
        except Exception as error:
            if self._cut_off(queue, [key]):
                raise
            self._record_failure(queue, key, error)
        else:
            self.tally[queue.name].made += outcome == "done"
            self.tally[queue.name].skipped += outcome == "skipped"
            logger.info("%s %s %s in %.1f s", queue.name, key, outcome, time.perf_counter() - start)
        finally:
            queue.forget([key])
            queue.observe(time.perf_counter() - start)
            self._after(queue, time.perf_counter() - start)

    def _batch_size(self, queue: JobQueue) -> int:
        """Return how many jobs of ``queue`` to make in the next transaction (within ``max_jobs``)."""
        size = self.options.batch or queue.suggested_batch()
        if self.options.max_jobs is not None:
            size = min(size, self.options.max_jobs - sum(t.made + t.skipped + t.failed for t in self.tally.values()))
        return max(size, 1)

    def _run_batch(self, queue: JobQueue, count: int) -> bool:
        """Make up to ``count`` jobs of ``queue`` in one transaction; return whether it claimed any."""
        tally = self.tally[queue.name]
        start = time.perf_counter()
        try:
            with self._current(queue, {"batch of up to": count}):
                outcome = queue.run_batch(count, keep_going=lambda: not self.stopping)
        except StopNow:
            queue.forget(queue.batch_keys)
            raise
        except Exception:
            if not self._cut_off(queue, queue.batch_keys):
                queue.forget(queue.batch_keys)
            raise
        elapsed = time.perf_counter() - start
        tally.made += len(outcome.done)
        tally.skipped += len(outcome.skipped)
        for key, error in outcome.failed:
            self._record_failure(queue, key, error)
        if outcome.done or outcome.skipped:
            queue.observe(elapsed, len(outcome.done) + len(outcome.skipped))
            logger.info("%s: %d done, %d skipped in one transaction, %.3f s", queue.name, len(outcome.done),
                        len(outcome.skipped), elapsed)
        self._after(queue, elapsed)
        return outcome.claimed > 0

    @contextlib.contextmanager
    def _current(self, queue: JobQueue, what):
        """Show ``what`` (a key, or a batch) as this worker's current job in its heartbeats while the block runs."""
        self._heartbeat.current = (queue.table.full_table_name, what)
        try:
            yield
        finally:
            self._heartbeat.current = ("", None)
            self._heartbeat.counts = self._counts()

    def _counts(self) -> tuple[int, int]:
        """Return the jobs this worker made and those that failed, so far."""
        return sum(t.made for t in self.tally.values()), sum(t.failed for t in self.tally.values())

    def _cut_off(self, queue: JobQueue, keys) -> bool:
        """Return whether the connection went with the error being handled: then it is not the jobs' failure.

        Their ``keys`` are kept for settling on reconnection (:meth:`_settle_if_reconnected`);
        the attempt does not count.
        """
        if self._contact.lost() or not self._contact.alive():
            self._interrupted = [(queue, key) for key in keys]
            return True
        return False

    def _record_failure(self, queue: JobQueue, key: dict, error: Exception) -> None:
        """Record a failed job in the job table (re-queued with backoff, or ``error``) and in the tallies."""
        try:
            if queue.fail(key, error, max_retries=self.options.max_retries,
                          backoff=self.options.retry_backoff) == "error":
                self.tally[queue.name].failed += 1
                self.tally[queue.name].errors.append((key, str(error)))
        finally:
            queue.forget([key])

    def _after(self, queue: JobQueue, elapsed: float) -> None:
        """Count a job's or a batch's time, give freed memory back after a long one, show progress."""
        self.tally[queue.name].seconds += elapsed
        if elapsed > LONG_JOB_SECONDS:
            return_free_memory()
        self._show_progress()

    def _show_progress(self) -> None:
        if self.progress is not None:
            self.progress(self.tally)

    def _release_held(self) -> None:
        for queue in {id(q): q for q, _ in self._held}.values():
            queue.release([key for q, key in self._held if q is queue])
        self._held = []

    # --- registry -----------------------------------------------------------------------

    def _register(self, connection) -> None:
        """Bind the registry, open the queues and insert this worker's registry row."""
        self._contact.reach()
        registry.ensure_active(connection)
        eligible = [table for table in self.tables if self.resources.can_run(table)]
        for table in set(self.tables) - set(eligible):
            logger.info("%s needs %s; this worker leaves it to others", table.__name__, table.resources)
        self.queues = [JobQueue(table, self.identity, provenance=self.options.provenance) for table in eligible]
        now = registry.server_now(connection)
        registry.Worker.insert1(dict(
            worker_id=self.identity.worker_id, host=self.identity.host, pid=self.identity.pid, status="running",
            started_time=now, heartbeat_time=now, heartbeat_seconds=self.options.heartbeat,
            resources=self.resources.as_json(), tables=",".join(q.name for q in self.queues)[:4000],
            version=self.identity.version, connection_id=connection.connection_id), skip_duplicates=True)
        self._contact.restored()

    def _shutdown(self, connection) -> None:
        try:
            if connection.in_transaction:
                connection.cancel_transaction()
            self._release_held()
            done, failed = self._counts()
            registry.deregister(self.identity.worker_id, done=done, failed=failed)
        except Exception as error:  # the database may be gone; the others will reclaim our jobs
            logger.warning("could not deregister cleanly: %s", error)
        if self._heartbeat:
            self._heartbeat.stop()

    def _sweep_orphans(self, connection) -> None:
        """On the heartbeat thread's connection: hand back this process's strays, rescue dead workers' jobs."""
        if self.queues:
            for queue in self.queues:
                queue.hand_back_strays(connection, wait=False)
            is_orphan = registry.orphan_judge(connection, self.identity.host)
            for queue in self.queues:
                queue.reset_orphans(is_orphan, connection)

    # --- signals ------------------------------------------------------------------------

    def _install_signal_handlers(self):
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        previous = {number: signal.signal(number, self._on_signal) for number in (signal.SIGTERM, signal.SIGINT)}
        return lambda: [signal.signal(number, handler) for number, handler in previous.items()]

    def _on_signal(self, number, frame) -> None:
        self._signals += 1
        self.stopping = True
        if self._signals == 1:
            logger.warning("%s: finishing the current job, then stopping (again to stop at once)",
                           signal.Signals(number).name)
            return
        raise StopNow()
