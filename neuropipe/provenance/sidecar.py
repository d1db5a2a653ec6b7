"""The provenance sidecar: one hidden table per computed table, one record per computed row.

``~prov_<table>`` lives in the table's schema beside DataJoint's job table ``~~<table>``
and, like it, has the table's primary key and no foreign key, so DataJoint's diagrams,
deletes and drops do not see it.

A record names the row it describes by the row's own id, not by its key alone.  A worker
gives each row it makes a fresh random id in a hidden column of the table, ``_row_id``
(hidden like DataJoint's own ``_job_start_time``: no query, fetch or insert sees it), and
writes the same id into the record's ``row_id``, both in the transaction that inserts the
row and marks its job done.  A record counts only where its row still carries its id:

- a row deleted in any way (``delete()``, DataJoint's cascade from an upstream row,
  ``neuropipe stale --recompute``, plain SQL, a dropped table) takes its id with it, in the
  same statement, so its record describes nothing from then on;
- a row made again by anything but a neuropipe worker that keeps provenance (stock
  ``populate()``, an insert by hand, a worker run with ``--no-provenance``) has no id, so
  it has no record; a worker that makes it again writes a fresh id and a fresh record.

Why an id rather than a foreign key with ``ON DELETE CASCADE``: DataJoint's dependency graph
lists the sidecar as a child of its table on MySQL (diagrams then show it), and on PostgreSQL
the constraint makes ``Table.drop()`` fail; and an id also tells apart a row that was
replaced, which no key can.  Query the records through :func:`neuropipe.provenance.of`
(DataJoint) or join on the id (SQL)::

    MembraneMap * provenance.of(MembraneMap)
    SELECT * FROM membrane.membrane_map AS m JOIN membrane."~prov_membrane_map" AS p
        USING (dataset, ...) WHERE p.row_id = m._row_id

Records that describe nothing any more are removed by :meth:`Sidecar.purge` (``neuropipe
stale --recompute`` calls it) or replaced when a worker makes the row again.
"""

from __future__ import annotations

from neuropipe import compat
from neuropipe.database import import_datajoint

dj = import_datajoint()

#: The hidden column of a computed table that holds the id of each row a worker made.
ROW_ID = "_row_id"
#: Its type: 32 hexadecimal digits (a random 128-bit id).
ROW_ID_TYPE = "char(32)"
#: What a row without a valid record shows in place of one (``neuropipe stale``, the report, the CLI).
NO_RECORD = "no record"

#: The columns of every sidecar after the primary key (DataJoint definition syntax).
RECORD_DEFINITION = """
    row_id = null      : char(32)         # the _row_id of the row described: the record counts only while they match
    code_hash          : char(32)         # md5 of the make() source and the project modules it uses
    neuropipe_version  : varchar(64)
    git_commit = ""    : varchar(40)      # commit of the work tree the code ran from ('' outside git)
    git_dirty = 0      : bool             # tracked files differed from that commit
    python = ""        : varchar(32)
    params_hash        : char(32)         # md5 of the Manual/Lookup rows the key refers to (parameters, datasets)
    inputs             : json             # the upstream rows: [{"table": ..., "key": {...}}]
    worker_id = ""     : varchar(32)      # neuropipe's worker registry id
    host               : varchar(255)
    pid                : int32
    start_time         : datetime(6)      # worker clock, UTC
    end_time           : datetime(6)
    duration           : float64          # seconds, wall clock
    cpu_seconds        : float64          # process CPU time (all threads) during make()
    peak_rss_mb        : float64          # the worker's peak resident memory during make()
    peak_gpu_mb = null : float64          # torch's peak CUDA memory during make(), where CUDA was used
    index (end_time)                      # the most recent records first (the dashboard's timeline)
    """


class Sidecar(dj.Table):
    """The provenance sidecar of one auto-populated table (see the module docstring).

    Parameters
    ----------
    target : table class or instance
        The auto-populated table whose rows the records describe.

    Notes
    -----
    The sidecar itself holds every record ever written, including those whose rows were
    deleted or made again since; :meth:`valid` is the part that describes rows of today.
    """

    def __init__(self, target):
        target = target() if isinstance(target, type) else target
        self._target = target
        self._definition = _definition(target)
        compat.bind_hidden_table(self, target.connection, target.database, f"~prov_{target.table_name.lstrip('_#~')}")

    @property
    def table_name(self) -> str:
        """str: ``~prov_`` and the target's table name."""
        return self._table_name

    @property
    def definition(self) -> str:
        """str: The target's primary key, then :data:`RECORD_DEFINITION`."""
        return self._definition

    @property
    def target(self):
        """The table whose rows this sidecar describes."""
        return self._target

    def _populate_lineage(self, primary_key, fk_attribute_map):
        """Give the key attributes the target's lineage, so the two join without a foreign key."""
        compat.share_lineage(self, self._target, primary_key)

    def ensure(self) -> Sidecar:
        """Declare the sidecar if it is not there yet, or give an older one its ``row_id``; return it.

        Both are DDL: call outside any transaction (a worker does, before its first job).
        """
        if not self.is_declared:
            try:
                self.declare()
            except dj.errors.DataJointError:
                if not self.is_declared:  # not a concurrent worker's declaration
                    raise
        elif not has_column(self, "row_id"):  # made before records named their rows: those cannot count
            add_column(self, "row_id", "the _row_id of the row described: the record counts only while they match")
            compat.reload_heading(self)
        return self

    def mark_target(self) -> Sidecar:
        """Give the target table its hidden ``_row_id`` column where it has none yet; return the sidecar.

        Rows already there keep no id (their records, if any, no longer count).  DDL on the
        user's table, as DataJoint's own ``migrate.add_job_metadata_columns``: adding a
        nullable column is a change of the catalogue only, on both servers.
        """
        if not has_column(self._target, ROW_ID):
            add_column(self._target, ROW_ID, "neuropipe: the id of the row, written with its provenance record")
        return self

    def valid(self):
        """Return the records whose rows still carry their ids: one per row a worker made, or none.

        Returns
        -------
        datajoint.Table
            The sidecar restricted to those records; join it with the target as any table.
        """
        if not has_column(self._target, ROW_ID) or not has_column(self, "row_id"):
            return self & "1 = 0"  # no worker has recorded a row of today's table yet
        return self.restrict(self._row_ids(), semantic_check=False)

    def purge(self) -> int:
        """Delete the records that describe no row any more; return how many.

        A row's deletion already made its record void (:meth:`valid` leaves it out); this
        reclaims the space and keeps plain-SQL counts of the sidecar honest.
        """
        if not self.is_declared:
            return 0
        void = "row_id IS NULL" + (f" OR NOT ({self._described()})" if has_column(self._target, ROW_ID) else "")
        return self.connection.query(f"DELETE FROM {self.full_table_name} WHERE {void}").rowcount

    def _row_ids(self):
        """Return the target's keys and row ids, where a row has one (the id is hidden: read as an expression)."""
        return (self._target & f"{ROW_ID} IS NOT NULL").proj(row_id=f"COALESCE({ROW_ID})")

    def _described(self) -> str:
        """Return the SQL condition of a record whose row, by key and id, is in the target."""
        key = ", ".join(self.connection.adapter.quote_identifier(name) for name in self.primary_key)
        return f"({key}, row_id) IN ({self._row_ids().make_sql()})"


def key_values(row: dict, names) -> tuple:
    """Return the values of ``names`` in ``row`` as text: a key to match rows and records by."""
    return tuple(str(row[name]) for name in names)


def has_column(table, column: str) -> bool:
    """Return whether ``table`` (declared) has ``column``, hidden or not, as the server's catalogue says now."""
    cursor = table.connection.query(
        "SELECT COUNT(*) FROM information_schema.columns WHERE table_schema=%s AND table_name=%s AND column_name=%s",
        args=(table.database, table.table_name, column))
    return bool(cursor.fetchone()[0])


def add_column(table, column: str, comment: str) -> None:
    """Add the nullable :data:`ROW_ID_TYPE` ``column`` to ``table``, unless a concurrent worker just did."""
    quote = table.connection.adapter.quote_identifier
    postgres = "postgres" in type(table.connection.adapter).__name__.lower()
    comment_clause = "" if postgres else f" COMMENT '{comment}'"
    try:
        table.connection.query(f"ALTER TABLE {table.full_table_name} ADD COLUMN {quote(column)} {ROW_ID_TYPE} "
                               f"NULL DEFAULT NULL{comment_clause}")
        if postgres:
            table.connection.query(f"COMMENT ON COLUMN {table.full_table_name}.{quote(column)} IS '{comment}'")
    except Exception:
        if not has_column(table, column):
            raise


def _definition(target) -> str:
    heading = target.heading
    key = "\n    ".join(f"{name} : {heading[name].original_type or heading[name].type}"
                       for name in heading.primary_key)
    return f"""
    # provenance of the rows of {target.full_table_name}
    {key}
    ---{RECORD_DEFINITION}"""
