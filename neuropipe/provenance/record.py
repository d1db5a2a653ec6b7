"""Measuring a job and writing its provenance row in the job's own transaction."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import resource
import sys
import time
import uuid

from neuropipe.database import sql_value
from neuropipe.provenance.code import code_hash, versions
from neuropipe.provenance.sidecar import Sidecar

TIERS = {"#": "lookup", "_": "imported", "__": "computed"}


class JobMeter:
    """Measure one job from its creation to :meth:`finish`: wall and CPU time, peak memory.

    The peak resident memory is the process's ``VmHWM`` after resetting it at the start
    (``/proc/self/clear_refs``, Linux); where that is not possible it is the process's
    lifetime peak (``ru_maxrss``), an upper bound.  GPU memory is torch's peak CUDA
    allocation, where this process has initialised CUDA.
    """

    def __init__(self):
        self.exact_peak = _reset_peak_rss()
        self.gpu = _cuda_in_use()
        if self.gpu:
            import torch

            torch.cuda.reset_peak_memory_stats()
        self.started = datetime.datetime.now(datetime.timezone.utc)
        self._wall = time.perf_counter()
        self._cpu = time.process_time()

    def finish(self) -> dict:
        """Return the measurements as provenance columns."""
        duration = time.perf_counter() - self._wall
        cpu = time.process_time() - self._cpu
        peak_gpu = None
        if self.gpu or _cuda_in_use():
            import torch

            peak_gpu = torch.cuda.max_memory_allocated() / 1e6
        ended = self.started + datetime.timedelta(seconds=duration)
        return dict(start_time=_naive(self.started), end_time=_naive(ended), duration=duration,
                    cpu_seconds=cpu, peak_rss_mb=peak_rss_bytes() / 1e6, peak_gpu_mb=peak_gpu)


class Recorder:
    """Writes the provenance rows of one table: what is fixed per process is worked out once.

    Each record gets a fresh ``row_id``, which the job queue writes into its row's hidden
    ``_row_id`` column in the same transaction (:mod:`~neuropipe.provenance.sidecar`): a
    record counts only while its row carries its id, so it can never be taken for the record
    of a row made again later.

    Parameters
    ----------
    table_class : type
        An auto-populated table class, bound to a schema.
    worker : dict
        ``worker_id``, ``host`` and ``pid`` of the process that makes the rows.
    """

    def __init__(self, table_class, worker: dict):
        table = table_class()
        self.sidecar = Sidecar(table).ensure().mark_target()  # DDL now: never inside a job's transaction
        self.connection = table.connection
        self.fixed = dict(code_hash=code_hash(table_class), **versions(), **worker)
        self.parents = upstream(table)
        self.key_names = list(self.sidecar.primary_key)
        self._statements = {}  # rows per statement -> SQL

    def prefetch(self, keys: list[dict], cache: dict) -> None:
        """Read the settings rows of many jobs' keys into ``cache``, one query per settings parent."""
        for parent in self.parents:
            if parent.is_setting:
                prefetch_settings(self.connection, parent, [parent.key_of(key) for key in keys], cache)

    def row(self, key: dict, measured: dict, cache: dict | None = None) -> dict:
        """Return ``key``'s provenance row: one query per settings parent not in ``cache`` (a batch's)."""
        row = {name: key[name] for name in self.key_names}
        row.update(self.fixed, **measured, row_id=uuid.uuid4().hex,
                   params_hash=settings_hash(self.connection, self.parents, key, cache),
                   inputs=json.dumps([dict(table=parent.name, key=parent.key_of(key)) for parent in self.parents]))
        return row

    def write_rows(self, rows: list[dict]) -> None:
        """Insert (or replace) provenance rows with one ``INSERT ... ON CONFLICT/DUPLICATE KEY UPDATE``.

        Call inside the job's transaction; the job queue writes each row's ``row_id`` into
        the made row in the same transaction (:meth:`~neuropipe.worker.jobs.JobQueue.run`).  A record
        left by a deleted row whose key is made again is replaced.
        """
        columns = list(rows[0])
        if len(rows) not in self._statements:
            quote = self.connection.adapter.quote_identifier
            self._statements[len(rows)] = self.connection.adapter.upsert_on_duplicate_sql(
                self.sidecar.full_table_name, [quote(name) for name in columns],
                [quote(name) for name in self.key_names], len(rows))
        self.connection.query(self._statements[len(rows)],
                              args=tuple(sql_value(row[name], self.connection) for row in rows for name in columns))


class Parent:
    """One primary parent of a table: its name, tier and how the table's key maps onto its key."""

    def __init__(self, name: str, attribute_map: dict, connection):
        self.name = name
        self.attribute_map = attribute_map  # child attribute -> parent attribute
        self.tier = tier_of(name)
        self._columns = None
        self._connection = connection

    def key_of(self, key: dict) -> dict:
        """Return the parent's key within a child's ``key``."""
        return {parent: _jsonable(key[child]) for child, parent in self.attribute_map.items()}

    @property
    def is_setting(self) -> bool:
        """Manual and Lookup rows (datasets, parameter sets) are settings: their content is hashed."""
        return self.tier in ("manual", "lookup")

    def columns(self) -> list[str]:
        """Return the parent's attributes that are hashed: all but blobs, attachments and stored objects."""
        if self._columns is None:
            from neuropipe.database import import_datajoint

            heading = import_datajoint().FreeTable(self._connection, self.name).heading
            self._columns = [name for name, attribute in heading.attributes.items()
                             if not (attribute.is_blob or attribute.codec is not None or attribute.store)]
        return self._columns


def upstream(table) -> list[Parent]:
    """Return ``table``'s primary parents (the rows a key refers to), in a stable order."""
    parents = table.parents(primary=True, foreign_key_info=True)
    return sorted((Parent(name, dict(props.get("attr_map", {})), table.connection) for name, props in parents),
                  key=lambda parent: parent.name)


def tier_of(full_name: str) -> str:
    """Return the DataJoint tier of a table from its name: manual, lookup, imported, computed or part."""
    name = full_name.split(".")[-1].strip('`"')
    if "__" in name.lstrip("_#"):
        return "part"
    if name.startswith("__"):
        return "computed"
    return TIERS.get(name[:1], "manual")


def settings_hash(connection, parents, key: dict, cache: dict | None = None) -> str:
    """Return the md5 of the Manual and Lookup rows that ``key`` refers to (its settings).

    ``cache`` (parent and its key -> row hash) spares reading a row twice within one
    transaction, where many jobs share a parameter set.
    """
    digest = hashlib.md5()
    cache = {} if cache is None else cache
    for parent in parents:
        if parent.is_setting:
            parent_key = parent.key_of(key)
            which = (parent.name, tuple(parent_key.items()))
            if which not in cache:
                cache[which] = row_hash(fetch_setting(connection, parent, parent_key))
            digest.update(parent.name.encode())
            digest.update(cache[which].encode())
    return digest.hexdigest()


def prefetch_settings(connection, parent: Parent, keys: list[dict], cache: dict) -> None:
    """Put the row hashes of ``parent``'s rows of ``keys`` into ``cache``, read with one query."""
    keys = list({tuple(key.items()): key for key in keys}.values())
    names = list(keys[0])
    quote = connection.adapter.quote_identifier
    row = "(" + ", ".join(["%s"] * len(names)) + ")"
    cursor = connection.query(
        f"SELECT {', '.join(quote(name) for name in parent.columns())} FROM {parent.name} "
        f"WHERE ({', '.join(quote(name) for name in names)}) IN ({', '.join([row] * len(keys))})",
        args=tuple(sql_value(key[name], connection) for key in keys for name in names), as_dict=True)
    for found in cursor.fetchall():
        cache[(parent.name, tuple((name, _jsonable(found[name])) for name in names))] = row_hash(found)


def fetch_setting(connection, parent: Parent, key: dict) -> dict | None:
    """Read one settings row (hashed columns only) with one plain SQL query."""
    quote = connection.adapter.quote_identifier
    columns = ", ".join(quote(name) for name in parent.columns())
    where = " AND ".join(f"{quote(name)}=%s" for name in key)
    cursor = connection.query(f"SELECT {columns} FROM {parent.name} WHERE {where}", args=tuple(key.values()),
                              as_dict=True)
    return cursor.fetchone()


def row_hash(row: dict | None) -> str:
    """Return the md5 of a row's values, independent of column order and of how JSON came back."""
    if row is None:
        return "absent"
    values = {name: _normalised(value) for name, value in row.items()}
    return hashlib.md5(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()


def _normalised(value):
    if isinstance(value, str) and value[:1] in "{[":
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _jsonable(value):
    return value if isinstance(value, (int, float, str, bool)) or value is None else str(value)


def _naive(moment: datetime.datetime) -> datetime.datetime:
    return moment.replace(tzinfo=None)


def _reset_peak_rss() -> bool:
    fd = _proc_file("clear_refs", os.O_WRONLY)
    if fd is None:
        return False
    try:
        os.write(fd, b"5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """Return this process's peak resident memory since the last reset (``VmHWM``), else its lifetime peak."""
    fd = _proc_file("status", os.O_RDONLY)
    if fd is not None:
        try:
            text = os.pread(fd, 8192, 0)
            at = text.find(b"VmHWM:")
            if at >= 0:
                return int(text[at + 6:text.index(b"kB", at)]) * 1024
        except OSError:
            pass
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


_PROC_FILES: dict = {}  # (pid, name) -> descriptor, or None where the file cannot be opened


def _proc_file(name: str, flags: int) -> int | None:
    """Return a descriptor of ``/proc/self/<name>``, opened once per process (a forked child opens its own).

    Measuring every job of a batch of short ones opened and closed both files each time, a
    tenth of the job's bookkeeping.
    """
    which = (os.getpid(), name)
    if which not in _PROC_FILES:
        try:
            _PROC_FILES[which] = os.open(f"/proc/{which[0]}/{name}", flags)
        except OSError:
            _PROC_FILES[which] = None
    return _PROC_FILES[which]


def _cuda_in_use() -> bool:
    torch = sys.modules.get("torch")
    return bool(torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized())
