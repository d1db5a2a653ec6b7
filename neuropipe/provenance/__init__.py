"""Provenance: which code, parameters, worker, inputs and resources made every computed row.

- :mod:`~neuropipe.provenance.code`: the code's identity (versions, git commit, source hash);
- :mod:`~neuropipe.provenance.sidecar`: the hidden table beside each computed table, and how a
  record stays tied to the one row it describes;
- :mod:`~neuropipe.provenance.record`: measuring a job and writing its row, in its transaction;
- :mod:`~neuropipe.provenance.stale`: rows whose code or settings changed since, rows without a
  record, and what depends on them.

Query it as any table::

    from neuropipe import provenance
    MembraneMap * provenance.of(MembraneMap)          # each row with its own record
    provenance.records(MembraneMap & key)             # each row, and its record or None
"""

from neuropipe.provenance.code import code_hash, git_state, versions
from neuropipe.provenance.record import JobMeter, Recorder
from neuropipe.provenance.sidecar import NO_RECORD, Sidecar, key_values


def of(table):
    """Return the provenance records of ``table``'s rows: one for each row a worker made, none for the rest.

    A record counts only while its row still carries the id written with it, so a row that
    was deleted and made again outside a worker (stock ``populate()``, by hand, a worker run
    with ``--no-provenance``) never shows the deleted row's record: it has none.

    Parameters
    ----------
    table : table class or instance
        An auto-populated table, bound to a schema.

    Returns
    -------
    datajoint.Table
        The table's sidecar, restricted to the records of its rows as they are now.
    """
    return Sidecar(table).ensure().valid()


def records(query, limit: int | None = None) -> list[tuple[dict, dict | None]]:
    """Return ``(key, record)`` for the rows of ``query`` (a table, or a restriction of one).

    ``record`` is the row's provenance record as a dict, or None where the row has none
    (shown as :data:`NO_RECORD`).  ``limit`` caps the rows read (in key order).
    """
    table = query if isinstance(query, type) else type(query)
    keys = (query() if isinstance(query, type) else query).keys(order_by="KEY", limit=limit)
    if not keys:
        return []
    found = {key_values(row, table.primary_key): row for row in (of(table) & keys).to_dicts()}
    return [(key, found.get(key_values(key, table.primary_key))) for key in keys]


def coverage(table) -> dict:
    """Return how many of ``table``'s rows have a record: ``rows``, ``recorded``, ``no_record``.

    Reads only: a table whose sidecar was never declared has no records.
    """
    rows = len(table())
    sidecar = Sidecar(table)
    recorded = len(table().proj() * sidecar.valid().proj()) if rows and sidecar.is_declared else 0
    return dict(rows=rows, recorded=recorded, no_record=rows - recorded)


__all__ = ["NO_RECORD", "JobMeter", "Recorder", "Sidecar", "code_hash", "coverage", "git_state", "of", "records",
           "versions"]
