"""What the dashboard shows, read from the database as it is now: plain dicts and lists, no HTML.

Every view reads what it needs on each request (nothing is kept between requests but the
images of datasets, which change only when their rows do).  The reads stay cheap at scale:
counts are ``GROUP BY`` queries on an index, capped, or the server's estimate for large
tables; lists are paged along the primary key's index or cut to the most recent; every value
from a request reaches SQL through DataJoint's dict restrictions or query arguments, never
spliced into the text.
"""

from __future__ import annotations

import datetime
import json

from neuropipe.provenance import Sidecar, code_hash
from neuropipe.worker import registry, status

#: What a table's node counts, in the order drawn.
COUNTS = ("done", "pending", "running", "error", "ignored")
PAGE_SIZE = 50
EXACT_BELOW = 100_000  # rows counted exactly; above, the server's estimate (a view of progress)
COUNT_CAP = 10_000  # jobs counted for a page's total; above, "more than"
TIMELINE_LIMIT = 400  # most recent jobs drawn on the timeline


def tier(table) -> str:
    """Return ``manual``, ``lookup``, ``imported`` or ``computed``."""
    for name in ("Lookup", "Manual", "Imported", "Computed"):
        if any(base.__name__ == name for base in type.mro(table)):
            return name.lower()
    return "table"


def graph(classes: list) -> dict:
    """Return the pipeline's graph: a node per table (part tables folded in), an edge per dependency.

    Parameters
    ----------
    classes : list of table classes
        Every table of the pipeline modules (Manual, Lookup, Imported, Computed), upstream first.

    Returns
    -------
    dict
        ``nodes``: name, tier, depth (the longest path from a root), and the counts of
        :data:`COUNTS` (rows for Manual and Lookup tables); ``edges``: (parent, child) names;
        ``blocks``: per blockwise table and dataset, blocks done of all.
    """
    by_full_name = {cls.full_table_name: cls for cls in classes}
    parents = {cls.__name__: sorted({_master_name(name, by_full_name) for name in cls().parents()} - {None})
               for cls in classes}
    depth: dict = {}
    for cls in classes:  # upstream first: a parent's depth is known
        depth[cls.__name__] = 1 + max((depth.get(parent, 0) for parent in parents[cls.__name__]), default=-1)
    computed = [cls for cls in classes if tier(cls) in ("imported", "computed")]
    nodes = []
    for cls in classes:
        done, approximate = row_count(cls)
        counts = status.job_counts(cls) if cls in computed else {}
        nodes.append(dict(name=cls.__name__, tier=tier(cls), depth=depth[cls.__name__], done=done,
                          approximate=approximate, **{name: counts.get(name, 0) for name in COUNTS[1:]},
                          workers=counts.get("workers", [])))
    edges = [(parent, child) for child, names in parents.items() for parent in names]
    return dict(nodes=nodes, edges=edges, blocks=status.block_progress(computed))


def row_count(table, exact_below: int = EXACT_BELOW) -> tuple[int, bool]:
    """Return a table's row count and whether it is the server's estimate (for tables of ``exact_below`` rows or more).

    Counting a million rows exactly takes most of a second on a small server, on every refresh;
    the catalogue's estimate is free and, for a progress view, close enough.
    """
    connection = table.connection
    capped = connection.query(f"SELECT COUNT(*) FROM (SELECT 1 FROM {table.full_table_name} LIMIT {exact_below}) "
                              f"AS capped").fetchone()[0]
    if capped < exact_below:
        return int(capped), False
    schema, name = _unquoted(table.full_table_name).split(".", 1)
    if connection.adapter.__class__.__name__.lower().startswith("postgres"):
        estimate = connection.query("SELECT reltuples FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                                    "WHERE n.nspname = %s AND c.relname = %s", args=(schema, name)).fetchone()
    else:
        estimate = connection.query("SELECT TABLE_ROWS FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s "
                                    "AND TABLE_NAME = %s", args=(schema, name)).fetchone()
    return max(int(estimate[0] or 0), exact_below) if estimate else exact_below, True


def _master_name(full_name: str, by_full_name: dict) -> str | None:
    """Return the class name of a table, or of its master for a part table; None outside the pipeline."""
    if full_name in by_full_name:
        return by_full_name[full_name].__name__
    schema, _, name = _unquoted(full_name).partition(".")
    for candidate, cls in by_full_name.items():
        candidate_schema, _, candidate_name = _unquoted(candidate).partition(".")
        if candidate_schema == schema and name.startswith(candidate_name + "__"):
            return cls.__name__
    return None


def _unquoted(full_name: str) -> str:
    return full_name.replace("`", "").replace('"', "")


def jobs_page(table, *, status_filter: str | None = None, key: dict | None = None, worker: str | None = None,
              page: int = 0, per_page: int = PAGE_SIZE) -> dict:
    """Return one page of a table's jobs, latest key first, filtered by status, key fields and worker.

    The page walks the primary key's index (its keys first, then their rows), so a deep page
    of a million jobs costs a walk of the index, not a sort of the table.

    Parameters
    ----------
    table : table class
    status_filter : str, optional
        ``pending``, ``reserved``, ``success``, ``error`` or ``ignore``.
    key : dict, optional
        Values of primary-key attributes (others are ignored).
    worker : str, optional
        ``host:pid``.
    page, per_page : int

    Returns
    -------
    dict
        ``rows`` (the job rows, their traceback left out), ``total`` (counted up to
        :data:`COUNT_CAP`), ``more`` (whether there are more than that), ``page``, ``pages``
        (None when not counted to the end), ``has_next``, ``key_names``.
    """
    jobs = table().jobs
    query = jobs
    if status_filter in status.STATUSES:
        query = query & {"status": status_filter}
    restriction = {name: value for name, value in (key or {}).items() if name in jobs.primary_key and value != ""}
    if restriction:
        query = query & restriction
    if worker and ":" in worker:
        host, pid = worker.rsplit(":", 1)
        query = query & {"host": host, "pid": int(pid) if pid.isdigit() else -1}
    total, more = capped_count(query)
    order = [f"{name} DESC" for name in jobs.primary_key]  # the primary key's index: no sort of the whole table
    keys = query.proj().to_dicts(order_by=order, limit=per_page, offset=page * per_page)
    shown = [name for name in jobs.heading.names if name not in jobs.primary_key and name != "error_stack"]
    rows = (jobs & keys).proj(*shown).to_dicts(order_by=order) if keys else []
    pages = None if more else max(1, -(-total // per_page))
    return dict(rows=rows, total=total, more=more, page=page, pages=pages, key_names=jobs.primary_key,
                has_next=len(keys) == per_page and (more or (page + 1) * per_page < total))


def capped_count(query, cap: int = COUNT_CAP) -> tuple[int, bool]:
    """Return how many rows ``query`` has, counting no further than ``cap``, and whether there are more."""
    sql = query.proj().make_sql()
    found = query.connection.query(f"SELECT COUNT(*) FROM ({sql} LIMIT {cap + 1}) AS capped").fetchone()[0]
    return min(int(found), cap), found > cap


def rows_page(table, *, key: dict | None = None, page: int = 0, per_page: int = PAGE_SIZE) -> dict:
    """Return one page of a Manual or Lookup table's rows (their plain columns), in key order."""
    instance = table()
    restriction = {name: value for name, value in (key or {}).items() if name in instance.primary_key and value != ""}
    query = instance & restriction if restriction else instance
    plain = [name for name, attribute in instance.heading.attributes.items()
             if not attribute.in_key and not getattr(attribute, "is_blob", False) and "@" not in str(attribute.type)]
    total, more = capped_count(query)
    rows = query.proj(*plain).to_dicts(order_by=instance.primary_key, limit=per_page, offset=page * per_page)
    return dict(rows=rows, total=total, more=more, page=page, pages=None if more else max(1, -(-total // per_page)),
                key_names=instance.primary_key, columns=plain,
                has_next=len(rows) == per_page and (more or (page + 1) * per_page < total))


def job_detail(table, key: dict) -> dict:
    """Return one job: its row and traceback, every earlier failed attempt, and the row's provenance record.

    ``record`` is None where the row was not made by a worker; ``stale`` says whether the
    code that made it differs from the code now.
    """
    jobs = table().jobs
    key = {name: value for name, value in key.items() if name in jobs.primary_key}
    found = (jobs & key).to_dicts()
    attempts = (registry.Failure & {"table_name": table.full_table_name, "key_hash": registry.key_hash(key)}
                ).to_dicts(order_by="attempt") if _declared(registry.Failure) else []
    record = None
    sidecar = Sidecar(table)
    if sidecar.is_declared and set(table.primary_key) <= set(key):
        records = (sidecar.valid() & key).to_dicts()
        record = records[0] if records else None
    made = len(table() & key) == 1 if set(table.primary_key) <= set(key) else False
    return dict(table=table.__name__, key=key, job=found[0] if found else None, attempts=attempts, record=record,
                made=made, stale=bool(record and record["code_hash"] != code_hash(table)))


def workers(limit: int = 100) -> list[dict]:
    """Return the registered workers, live ones first: host, resources, current job, heartbeat age, jobs per minute."""
    now = registry.server_now(registry.Worker.connection)
    rows = (registry.Worker.proj(..., "-connection_id")).to_dicts(order_by=["status", "started_time DESC"],
                                                                 limit=limit)
    for row in rows:
        row["heartbeat_age"] = (now - row["heartbeat_time"]).total_seconds()
        minutes = max((row["heartbeat_time"] - row["started_time"]).total_seconds() / 60, 1 / 60)
        row["per_minute"] = row["jobs_done"] / minutes
        row["alive"] = row["status"] in ("running", "stopping") and row["heartbeat_age"] <= 2 * row[
            "heartbeat_seconds"] + 1
        row["current"] = (f"{row['current_table'].split('.')[-1].strip('`')} {_text(row['current_key'])}"
                          if row["current_table"] else "")
    return sorted(rows, key=lambda row: (not row["alive"], row["status"] != "running"))


def timeline(tables, limit: int = TIMELINE_LIMIT) -> list[dict]:
    """Return the most recent jobs of every table with a record: table, worker, start, end, duration, memory."""
    found = []
    for table in tables:
        sidecar = Sidecar(table)
        if not sidecar.is_declared:
            continue
        rows = sidecar.proj("host", "pid", "start_time", "end_time", "duration", "peak_rss_mb").to_dicts(
            order_by="end_time DESC", limit=limit)
        found += [dict(table=table.__name__, worker=f"{row['host']}:{row['pid']}", start=row["start_time"],
                       end=row["end_time"], duration=row["duration"], peak_rss_mb=row["peak_rss_mb"]) for row in rows]
    found.sort(key=lambda row: row["end"], reverse=True)
    return found[:limit]


def costs(tables, recent: int = COUNT_CAP) -> list[dict]:
    """Per table: the mean and largest duration and peak memory of its ``recent`` latest jobs (on the server)."""
    found = []
    for table in tables:
        sidecar = Sidecar(table)
        if not sidecar.is_declared:
            continue
        quote = table.connection.adapter.quote_identifier
        duration, memory = quote("duration"), quote("peak_rss_mb")
        row = table.connection.query(
            f"SELECT COUNT(*), AVG({duration}), MAX({duration}), AVG({memory}), MAX({memory}) FROM "
            f"(SELECT {duration}, {memory} FROM {sidecar.full_table_name} ORDER BY {quote('end_time')} DESC "
            f"LIMIT {int(recent)}) AS latest").fetchone()
        if row[0]:
            found.append(dict(table=table.__name__, jobs=int(row[0]), mean_seconds=float(row[1]),
                              max_seconds=float(row[2]), mean_mb=float(row[3] or 0), max_mb=float(row[4] or 0)))
    return found


def failed(tables, limit: int = 20) -> list[dict]:
    """Return, per table with errors, how many and the latest few (message, key, worker)."""
    found = []
    for table in tables:
        errors = table().jobs & {"status": "error"}
        count = len(errors)
        if count:
            latest = errors.proj("error_message", "host", "pid", "completed_time").to_dicts(
                order_by="completed_time DESC", limit=limit)
            found.append(dict(table=table.__name__, count=count, latest=latest))
    return found


def _declared(table) -> bool:
    try:
        return table.is_declared
    except Exception:  # an unbound schema
        return False


def _text(value) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, default=str)
    if isinstance(value, datetime.datetime):
        return f"{value:%Y-%m-%d %H:%M:%S}"
    return "" if value is None else str(value)
