"""The provenance sidecar: one hidden table per computed table, one row per computed row.

``~prov_<table>`` lives in the table's schema beside DataJoint's job table ``~~<table>``
and, like it, has the table's primary key and no foreign key: the table's own definition is
untouched, DataJoint's diagrams and deletes do not see it, and a natural join brings the
two together::

    MembraneMap * provenance.of(MembraneMap)          # DataJoint
    SELECT * FROM membrane.membrane_map JOIN membrane."~prov_membrane_map" USING (dataset, ...)

A worker writes the row in the transaction that inserts the computed row and marks its job
done, so a row and its record exist together or not at all.  A record whose row was deleted
is an orphan the join leaves out; remaking the row replaces it.
"""

from __future__ import annotations

from neuropipe.database import import_datajoint

dj = import_datajoint()

#: The columns of every sidecar after the primary key (DataJoint definition syntax).
RECORD_DEFINITION = """
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
    """


class Sidecar(dj.Table):
    """The provenance sidecar of one auto-populated table (see the module docstring)."""

    def __init__(self, target):
        target = target() if isinstance(target, type) else target
        self._target = target
        self._connection = target.connection
        self.database = target.database
        self._table_name = f"~prov_{target.table_name.lstrip('_#~')}"
        self._definition = _definition(target)
        self._heading = dj.heading.Heading(table_info=dict(conn=self._connection, database=self.database,
                                                           table_name=self._table_name, context=None))
        self._support = [self.full_table_name]

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
        from datajoint.lineage import delete_table_lineages, ensure_lineage_table, get_lineage, insert_lineages

        ensure_lineage_table(self.connection, self.database)
        delete_table_lineages(self.connection, self.database, self.table_name)
        target = self._target
        insert_lineages(self.connection, self.database, [
            (self.table_name, name, get_lineage(self.connection, target.database, target.table_name, name)
             or f"{target.database}.{target.table_name}.{name}") for name in primary_key])

    def ensure(self) -> Sidecar:
        """Declare the sidecar if it is not there yet (outside any transaction); return it."""
        if not self.is_declared:
            try:
                self.declare()
            except dj.errors.DataJointError:
                if not self.is_declared:  # not a concurrent worker's declaration
                    raise
        return self


def _definition(target) -> str:
    heading = target.heading
    key = "\n    ".join(f"{name} : {heading[name].original_type or heading[name].type}"
                       for name in heading.primary_key)
    return f"""
    # provenance of the rows of {target.full_table_name}
    {key}
    ---{RECORD_DEFINITION}"""
