"""Calling a table's ``make()`` the way DataJoint's own ``populate`` does.

Inserts into the table are allowed for the key, DataJoint's upstream view and lineage
provenance are set, and a tripartite ``make`` (fetch, compute, insert generator) is driven
through its three steps.  Before it, whatever an earlier attempt at the key left in the
store (a job that failed or was killed mid-write: the row was never committed, its objects
were) is removed, so a retry that succeeds leaves no orphaned object.
"""

from __future__ import annotations

import inspect
import logging

from neuropipe import compat

logger = logging.getLogger(__name__)


def call_make(table, key: dict, make_kwargs, version: str) -> None:
    """Call ``make()`` as DataJoint's own populate does (inserts allowed, upstream view, provenance)."""
    from datajoint import provenance

    make = compat.make_method(table)
    clear_debris(table, key)
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


def clear_debris(table, key: dict) -> int:
    """Remove the store objects under ``key``'s folders of ``table`` and its parts; return how many.

    Called only for a key that has no row (the worker checked, in the job's transaction, and
    holds the key's reservation), so nothing there is referenced: it is what an attempt that
    failed or was killed after writing, before committing, left behind.
    """
    removed = 0
    for backend, folder in compat.object_folders(table, key):
        backend.fs.invalidate_cache(folder)
        leftovers = backend.fs.find(folder)
        if leftovers:
            backend.fs.rm(leftovers)
            removed += len(leftovers)
    if removed:
        logger.warning("%s %s: removed %d object(s) an earlier attempt left in the store", table.table_name,
                       key, removed)
    return removed
