"""Workers: fill every auto-populated table of a pipeline, in dependency order.

The schema is the DAG and DataJoint's per-table job tables are the queue: a worker walks
the Imported and Computed tables of the modules it serves in topological order and calls
``populate(reserve_jobs=True)`` on each, so any number of workers, anywhere, share the work
through the database.  Failures are recorded in the job tables (``Table().jobs``) with their
messages and never stop the worker.  The demo drains the graph through this same loop.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import time
from dataclasses import dataclass, field
from types import ModuleType

from neuropipe.database import import_datajoint

logger = logging.getLogger(__name__)


@dataclass
class TableTally:
    """What one worker did on one table."""

    table: str
    made: int = 0
    failed: int = 0
    seconds: float = 0.0
    errors: list = field(default_factory=list)


def load_pipeline(names, *, prefix: str | None = None) -> list[ModuleType]:
    """Import pipeline modules by name and make sure their schemas are bound.

    A module (or package) that exposes ``activate(prefix, connection)``, as the bundled
    ``schemas`` does, is activated with ``prefix``; a plain user module that binds its own
    schemas at import time is used as it is.
    """
    modules = [importlib.import_module(name) for name in names]
    for module in modules:
        if callable(getattr(module, "activate", None)) and prefix is not None:
            module.activate(prefix)
    return modules


def pipeline_tables(modules) -> list[type]:
    """Return the Imported and Computed table classes of ``modules``, upstream first.

    A package contributes the tables of its submodules listed in ``MODULES`` as well.
    """
    dj = import_datajoint()
    classes = {}
    for module in _expand(modules):
        for obj in vars(module).values():
            if (
                inspect.isclass(obj)
                and issubclass(obj, (dj.Imported, dj.Computed))
                and getattr(obj, "database", None)
                and obj.__module__ == module.__name__
            ):
                classes[obj.full_table_name] = obj
    if not classes:
        return []
    connection = next(iter(classes.values())).connection
    connection.dependencies.load()
    order = {name: index for index, name in enumerate(connection.dependencies.topo_sort())}
    return sorted(classes.values(), key=lambda cls: order.get(cls.full_table_name, len(order)))


def _expand(modules):
    for module in modules:
        yield module
        yield from getattr(module, "MODULES", ())


def run_worker(tables, *, max_idle: float | None = None, poll_seconds: float = 5.0,
               max_jobs: int | None = None, restrictions=()) -> dict[str, TableTally]:
    """Populate ``tables`` until there is nothing left to do for ``max_idle`` seconds.

    Parameters
    ----------
    tables : list of table classes
        Upstream first, as :func:`pipeline_tables` returns them.
    max_idle : float, optional
        Return after this long without work; 0 drains the graph once and returns.
        Default None: serve forever.
    poll_seconds : float, optional
        Pause between passes that found nothing to do. Default 5.
    max_jobs : int, optional
        Return after this many jobs (successful or not).
    restrictions : tuple, optional
        Restrictions passed to every ``populate`` call.

    Returns
    -------
    dict
        A :class:`TableTally` per table name.
    """
    tally = {table.__name__: TableTally(table.__name__) for table in tables}
    idle_since = time.monotonic()
    jobs = 0
    while True:
        worked = False
        for table in tables:
            budget = None if max_jobs is None else max_jobs - jobs
            if budget == 0:
                return tally
            done = _populate(table, tally[table.__name__], budget, restrictions)
            jobs += done
            worked = worked or done > 0
        if worked:
            idle_since = time.monotonic()
            continue
        if max_idle is not None and time.monotonic() - idle_since >= max_idle:
            return tally
        time.sleep(poll_seconds)


def _populate(table, tally: TableTally, budget, restrictions) -> int:
    start = time.perf_counter()
    result = table().populate(*restrictions, reserve_jobs=True, suppress_errors=True, max_calls=budget)
    made, failed = result["success_count"], len(result["error_list"])
    if made or failed:
        seconds = time.perf_counter() - start
        tally.made += made
        tally.failed += failed
        tally.seconds += seconds
        tally.errors.extend(result["error_list"])
        logger.info("%s: %d made, %d failed in %.1f s", table.__name__, made, failed, seconds)
        for key, message in result["error_list"]:
            logger.warning("%s %s failed: %s", table.__name__, key, message)
    return made + failed
