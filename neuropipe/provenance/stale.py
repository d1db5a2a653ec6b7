"""Stale rows: made by code or settings that differ from what would make them now.

A computed row is *stale* when

- its table's code hash differs from the one recorded with it (``code changed``);
- a Manual or Lookup row its key refers to (a dataset, a parameter set) was edited since
  (``settings changed``);
- it has no provenance record (``no record``: made outside neuropipe's workers or by one run
  with ``--no-provenance``, before provenance was kept, or made again since its record was
  written: a record only counts for the row it was written with, see
  :mod:`~neuropipe.provenance.sidecar`); or
- a row upstream of it is stale (``upstream: <Table>``).

``neuropipe stale`` lists them; ``--recompute`` deletes them with everything that depends
on them (after showing what will go), removes the records that describe nothing any more,
and queues their keys again.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from neuropipe.provenance.code import code_hash
from neuropipe.provenance.record import row_hash, upstream
from neuropipe.provenance.sidecar import NO_RECORD, Sidecar, key_values


@dataclass
class StaleRows:
    """The stale rows of one table: their keys and, per key, why."""

    table: type
    keys: list = field(default_factory=list)
    reasons: list = field(default_factory=list)
    _seen: set = field(default_factory=set, repr=False)

    @property
    def name(self) -> str:
        """str: The table's class name."""
        return self.table.__name__

    def add(self, key: dict, reason: str) -> None:
        """Add ``key`` (once) for ``reason``."""
        frozen = tuple(sorted((name, str(value)) for name, value in key.items()))
        if frozen not in self._seen:
            self._seen.add(frozen)
            self.keys.append(key)
            self.reasons.append(reason)

    def counts(self) -> dict:
        """Return how many rows are stale for each kind of reason."""
        found: dict = {}
        for reason in self.reasons:
            found[reason] = found.get(reason, 0) + 1
        return found


def find_stale(tables, only=None) -> list[StaleRows]:
    """Return the stale rows of each auto-populated table in ``tables`` (upstream tables first).

    Parameters
    ----------
    tables : list of table classes
        Upstream tables before the tables that depend on them, as
        :func:`neuropipe.pipeline.pipeline_tables` lists them.
    only : callable, optional
        ``only(table)``: whether to check the table's own rows; the others are still searched
        for rows downstream of stale ones (default: check all).
    """
    found = []
    for table in tables:
        stale = StaleRows(table)
        for key, reason in own_staleness(table) if only is None or only(table) else ():
            stale.add(key, reason)
        for earlier in found:
            if earlier.keys and _descends(table, earlier.table):
                rows = (table() & earlier.keys).proj().to_dicts() if _shares_key(table, earlier.table) else []
                for key in rows:
                    stale.add(key, f"upstream: {earlier.name}")
        found.append(stale)
    return found


def own_staleness(table) -> list[tuple[dict, str]]:
    """Return ``(key, reason)`` for the rows of ``table`` whose own code or settings changed."""
    instance = table()
    primary = instance.primary_key
    recorded = {key_values(row, primary): row for row in
                (instance.proj() * Sidecar(instance).ensure().valid().proj("code_hash", "params_hash")).to_dicts()}
    current_code = code_hash(table)
    settings = _settings_hashes(instance)
    stale = []
    for row in instance.proj().to_dicts():
        record = recorded.get(key_values(row, primary))
        if record is None:
            stale.append((row, NO_RECORD))
        elif record["code_hash"] != current_code:
            stale.append((row, "code changed"))
        elif record["params_hash"] != settings(row):
            stale.append((row, "settings changed"))
    return stale


def _settings_hashes(table):
    """Return ``key -> settings hash`` as :func:`~neuropipe.provenance.record.settings_hash` computes it."""
    parents = [parent for parent in upstream(table) if parent.is_setting]
    quote = table.connection.adapter.quote_identifier
    hashes = []
    for parent in parents:
        columns = parent.columns()
        cursor = table.connection.query(
            f"SELECT {', '.join(quote(name) for name in columns)} FROM {parent.name}", as_dict=True)
        by_key = {tuple(str(row[name]) for name in parent.attribute_map.values()): row_hash(row)
                  for row in cursor.fetchall()}
        hashes.append((parent, by_key))

    def settings(key: dict) -> str:
        digest = hashlib.md5()
        for parent, by_key in hashes:
            digest.update(parent.name.encode())
            digest.update(by_key.get(tuple(str(key[child]) for child in parent.attribute_map), "absent").encode())
        return digest.hexdigest()

    return settings


def recompute(found: list[StaleRows]) -> dict:
    """Delete the stale rows (with what depends on them), purge the void records, queue the keys again.

    Parameters
    ----------
    found : list of StaleRows
        From :func:`find_stale`.

    Returns
    -------
    dict
        Table name -> rows deleted from it.
    """
    deleted = {stale.name: len(stale.keys) for stale in found if stale.keys}
    for stale in found:  # upstream first: deleting them takes what depends on them along
        rows = stale.table() & stale.keys if stale.keys else None
        if rows is not None and len(rows):
            rows.delete(prompt=False)
    for stale in found:
        Sidecar(stale.table).purge()
        stale.table().jobs.refresh()  # DataJoint's own: queues the missing keys, re-pends completed ones
    return deleted


def _descends(table, ancestor) -> bool:
    table, ancestor = table(), ancestor()
    names = table.connection.dependencies.ancestors(table.full_table_name)
    return ancestor.full_table_name in names and ancestor.full_table_name != table.full_table_name


def _shares_key(table, ancestor) -> bool:
    return set(ancestor().primary_key) <= set(table().primary_key)
