"""What a report shows, read from the database as plain data (lists of dicts); nothing is drawn here.

Job times and resources come from the provenance sidecars (:mod:`neuropipe.provenance`): one
record per made row with the worker's host and pid, its start and end (worker clock, UTC),
wall and CPU seconds and peak memory.  Only records of the rows as they are now count: a row
made again outside a worker has none (it is counted under "no record").  Where no table has
records (workers run with ``--no-provenance``) the job tables' reservation times and
durations stand in.
"""

from __future__ import annotations

import datetime
import sys
from collections import defaultdict

from neuropipe import provenance
from neuropipe.provenance import Sidecar

#: Score columns plotted against parameters, where a table has them.
SCORES = ("f1", "pixel_error", "adapted_rand_error")
#: Provenance columns whose distributions are drawn.
RESOURCES = ("duration", "cpu_seconds", "peak_rss_mb")


def job_records(tables) -> list[dict]:
    """Return one record per made row: ``table``, ``worker`` (host:pid), ``start``, ``end`` and resources.

    Records of rows that were deleted or made again since are left out.
    """
    records = []
    for table in tables:
        sidecar = Sidecar(table)
        if not sidecar.is_declared:
            continue
        for row in sidecar.valid().proj("host", "pid", "start_time", "end_time", *RESOURCES).to_dicts():
            records.append(dict(table=table.__name__, worker=f"{row['host']}:{row['pid']}", start=row["start_time"],
                                end=row["end_time"], clock="UTC", **{name: row[name] for name in RESOURCES}))
    return records or _job_table_records(tables)


def _job_table_records(tables) -> list[dict]:
    """Done jobs from the job tables (server clock): start at reservation, end a duration later."""
    records = []
    for table in tables:
        done = table().jobs & "status='success'"
        for row in done.proj("host", "pid", "reserved_time", "duration").to_dicts():
            if row["reserved_time"] is None or row["duration"] is None:
                continue
            end = row["reserved_time"] + datetime.timedelta(seconds=float(row["duration"]))
            records.append(dict(table=table.__name__, worker=f"{row['host']}:{row['pid']}", start=row["reserved_time"],
                                end=end, clock="server time", duration=float(row["duration"]), cpu_seconds=None,
                                peak_rss_mb=None))
    return records


def record_coverage(tables) -> dict:
    """Return, per table class name, how many of its rows have no provenance record of their own."""
    return {table.__name__: provenance.coverage(table)["no_record"] for table in tables}


def worker_summary(records) -> list[dict]:
    """Per worker: jobs, busy seconds, first start and last end, busiest first."""
    by_worker = defaultdict(list)
    for record in records:
        by_worker[record["worker"]].append(record)
    summary = [dict(worker=worker, jobs=len(rows), busy=sum((r["end"] - r["start"]).total_seconds() for r in rows),
                    first=min(r["start"] for r in rows), last=max(r["end"] for r in rows),
                    tables=sorted({r["table"] for r in rows}))
               for worker, rows in by_worker.items()]
    return sorted(summary, key=lambda row: (-row["jobs"], row["worker"]))


def resource_summary(records) -> list[dict]:
    """Per table: jobs, and the median and largest of each resource column (None where unmeasured)."""
    by_table = defaultdict(list)
    for record in records:
        by_table[record["table"]].append(record)
    summary = []
    for table, rows in by_table.items():
        entry = dict(table=table, jobs=len(rows))
        for name in RESOURCES:
            values = sorted(float(r[name]) for r in rows if r[name] is not None)
            entry[name] = (values[len(values) // 2], values[-1]) if values else None
        summary.append(entry)
    return summary


def score_tables(tables, classes: dict) -> list[dict]:
    """Per table with score columns (:data:`SCORES`) and rows: the rows with the parameters that made them.

    The rows are joined with every parameter set their key names, as ``neuropipe scores``
    does (:func:`neuropipe.sweeps.score_rows`): a parameter column is named ``<param>``, or
    ``<Table>.<param>`` where two parameter tables share a name.  A parameter a set leaves
    out gets its kernel's default.

    Returns
    -------
    list of dict
        ``table``, ``scores`` (column names), ``rows`` (key, scores and parameters),
        ``parameters`` (the parameter columns), ``varying`` (those taking more than one value)
        and ``fixed`` (column -> its one value).
    """
    from neuropipe.sweeps import score_rows
    from neuropipe.sweeps.scores import parameter_tables, varying

    modules = {sys.modules[cls.__module__] for cls in classes.values() if cls.__module__ in sys.modules}
    found = []
    for table in tables:
        scores = [name for name in SCORES if name in table.heading.names]
        if not scores or not len(table()):
            continue
        merged: dict = {}
        for score in scores:
            rows, columns = score_rows(table, score, modules)
            for row in rows:
                merged.setdefault(tuple(str(row[k]) for k in table.primary_key), row)[score] = row[score]
        rows = list(merged.values())
        _fill_defaults(rows, columns, [cls for cls in parameter_tables(modules).values()
                                       if cls.key_name in table.primary_key])
        changing = varying(rows, columns)
        rows.sort(key=lambda row: [str(row.get("dataset", ""))] + [_sortable(row.get(name)) for name in changing])
        found.append(dict(table=table.__name__, scores=scores, rows=rows, parameters=columns, varying=changing,
                          fixed={name: rows[0].get(name) for name in columns if name not in changing}))
    return found


def _sortable(value) -> tuple:
    """Order numbers by value, before anything else by text."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, str(value))


def _fill_defaults(rows: list[dict], columns: list[str], parameter_classes) -> None:
    """Give each row the kernel default of a parameter its set leaves out, where the owner is clear."""
    defaults = {cls.__name__: _kernel_defaults(cls) for cls in parameter_classes}
    for column in columns:
        owner, _, name = column.rpartition(".")
        owners = [owner] if owner in defaults else [table for table, values in defaults.items() if name in values]
        if len(owners) != 1 or name not in defaults[owners[0]]:
            continue
        for row in rows:
            if row.get(column) is None:
                row[column] = defaults[owners[0]][name]


def _kernel_defaults(cls) -> dict:
    """Return the scalar defaults of a parameter table's kernel (:meth:`~neuropipe.params.ParamSet.defaults`)."""
    defaults = cls.defaults() if callable(getattr(cls, "defaults", None)) else {}
    return {name: value for name, value in defaults.items() if isinstance(value, (bool, int, float, str))}
