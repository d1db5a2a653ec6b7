"""Workers: the machinery that fills a pipeline's tables, coordinated only through the database.

One module a concern:

- :mod:`~neuropipe.worker.loop` -- the :class:`Worker` loop: tables upstream first, claim, make,
  settle after a lost connection, stop on signals;
- :mod:`~neuropipe.worker.options` -- :class:`WorkerOptions`, declared once for the loop, the
  command line and :func:`neuropipe.populate`;
- :mod:`~neuropipe.worker.jobs` -- the job protocol on DataJoint's job tables: queue, claim,
  complete, fail, hand back (:class:`~neuropipe.worker.jobs.JobQueue`);
- :mod:`~neuropipe.worker.batch` -- many short jobs in one transaction;
- :mod:`~neuropipe.worker.holdings` -- who claims (:class:`Identity`) and what this process holds;
- :mod:`~neuropipe.worker.make` -- calling a table's ``make()`` as DataJoint's ``populate`` does;
- :mod:`~neuropipe.worker.registry` -- the worker registry, heartbeats, failed attempts, orphans;
- :mod:`~neuropipe.worker.contact` -- whether the worker's database session is still the one
  its reservations were made in;
- :mod:`~neuropipe.worker.failures` -- which failures are retried, and when;
- :mod:`~neuropipe.worker.resources` -- what a worker offers (memory, GPUs) and a table needs;
- :mod:`~neuropipe.worker.supervisor` -- several worker processes on one machine;
- :mod:`~neuropipe.worker.status` -- progress, live workers and failed jobs, for people.
"""

from neuropipe.worker.holdings import Identity
from neuropipe.worker.jobs import JobQueue
from neuropipe.worker.loop import Worker, run_worker
from neuropipe.worker.options import TableTally, WorkerOptions

__all__ = ["Identity", "JobQueue", "TableTally", "Worker", "WorkerOptions", "run_worker"]
