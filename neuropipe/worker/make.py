"""Calling a table's ``make()`` the way DataJoint's own ``populate`` does.

Inserts into the table are allowed for the key, DataJoint's upstream view and lineage
provenance are set, and a tripartite ``make`` (fetch, compute, insert generator) is driven
through its three steps.
"""

from __future__ import annotations

import inspect

from neuropipe import compat


def call_make(table, key: dict, make_kwargs, version: str) -> None:
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
