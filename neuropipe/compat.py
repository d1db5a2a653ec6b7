"""Every use of DataJoint's internals, in one place.

neuropipe runs ``make()`` itself (to fold the claim, the rows and the job's completion into
one transaction), declares hidden tables of its own (the provenance sidecars) and writes
blockwise arrays straight into DataJoint's store.  For that it needs a few names DataJoint
does not document as public.  They are all used here and nowhere else, and :data:`INTERNALS`
lists them: :func:`missing_internals` (and ``tests/test_compat.py``) names any that a
DataJoint upgrade removed, rather than letting a worker fail on it mid-job.

Tested against DataJoint 2.3.5; ``pyproject.toml`` admits any 2.x from it on, because an upgrade that
removes one of these names fails ``tests/test_compat.py`` by name instead of a worker mid-job.
"""

from __future__ import annotations

import importlib

#: (what, attribute): a module, class or connection attribute neuropipe relies on.  "connection"
#: attributes exist on each :class:`datajoint.Connection` once it is opened.
INTERNALS = (
    ("datajoint.autopopulate.AutoPopulate", "_allow_insert"),  # inserts into auto-populated tables allowed
    ("datajoint.autopopulate.AutoPopulate", "_has_job_metadata_attrs"),  # the table has _job_start_time, ...
    ("datajoint.table.Table", "_populate_lineage"),  # the hook a hidden table overrides to join without a key
    ("datajoint.table.Table", "_heading"),
    ("datajoint.table.Table", "_support"),
    ("datajoint.heading.Heading", "__init__"),  # Heading(table_info=...): a heading read from the server
    ("datajoint.lineage", "get_lineage"),
    ("datajoint.lineage", "insert_lineages"),
    ("datajoint.lineage", "delete_table_lineages"),
    ("datajoint.lineage", "ensure_lineage_table"),
    ("datajoint.hash_registry", "get_store_backend"),  # the store backend of a named store
    ("datajoint.storage.StorageBackend", "_full_path"),
    ("datajoint.storage", "build_object_path"),  # where <object@> and <npy@> values of a key are written
    ("datajoint.builtin_codecs.npy.NpyRef", "_backend"),  # the backend an <npy@> value is read from
    ("datajoint.user_tables", "UserTable"),
    ("connection", "_conn"),  # the DB-API connection underneath (its identity changes on a reconnect)
    ("connection", "_in_transaction"),
    ("connection", "_config"),  # the connection's settings: jobs.keep_completed, default_priority, stores
)


def missing_internals(connection=None) -> list[str]:
    """Return the :data:`INTERNALS` this DataJoint lacks, as ``"module.Class.attribute"``; empty when all are there.

    Parameters
    ----------
    connection : datajoint.Connection, optional
        Also check the attributes of an open connection (without one they are not checked).
    """
    missing = []
    for owner, attribute in INTERNALS:
        if owner == "connection":
            if connection is not None and not hasattr(connection, attribute):
                missing.append(f"datajoint.Connection (instance).{attribute}")
            continue
        found = _resolve(owner)
        if found is None or not hasattr(found, attribute):
            missing.append(f"{owner}.{attribute}")
    return missing


def _resolve(dotted: str):
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            found = getattr(found, name, None)
        return found
    return None


# --- running make() the way DataJoint's populate does ----------------------------------


def make_method(table):
    """Return the table's ``make`` (or the older ``_make_tuples``)."""
    return table._make_tuples if hasattr(table, "_make_tuples") else table.make


def allow_inserts(table, key: dict | None) -> None:
    """Let ``make()`` insert into ``table`` for ``key`` (None: stop allowing), as DataJoint's populate does."""
    type(table)._allow_insert = key is not None
    table._upstream_key, table._upstream = (dict(key) if key is not None else None), None


def has_job_metadata(table) -> bool:
    """Return whether ``table`` has DataJoint's hidden job columns (``_job_start_time``, ...)."""
    return table._has_job_metadata_attrs()


# --- the connection --------------------------------------------------------------------


def settings_of(connection):
    """Return the DataJoint settings the connection was opened with (``jobs``, ``stores``, ...)."""
    return connection._config


def driver_connection(connection):
    """Return the DB-API connection underneath: a different object after DataJoint reconnected."""
    return connection._conn


def ping(connection) -> bool:
    """Return whether the server answers (DataJoint's ``is_connected`` takes a failed ping for success)."""
    return bool(connection.adapter.ping(connection._conn))


def read_connection_id(connection) -> int:
    """Return the server's id of the connection's current session."""
    return connection.adapter.get_connection_id(connection._conn)


def set_in_transaction(connection, value: bool) -> None:
    """Tell DataJoint whether a transaction is open (neuropipe opens some in one round trip of its own)."""
    connection._in_transaction = value


# --- hidden tables of neuropipe's own --------------------------------------------------


def bind_hidden_table(table, connection, database: str, table_name: str) -> None:
    """Make an instance of a :class:`datajoint.Table` subclass stand for ``database.table_name``.

    One class serves many tables (each sidecar is an instance of :class:`~neuropipe.provenance.Sidecar`).
    """
    table._connection = connection
    table.database = database
    table._table_name = table_name
    reload_heading(table)
    table._support = [table.full_table_name]


def reload_heading(table) -> None:
    """Give ``table`` a heading read from the server when first used (after its columns changed)."""
    from datajoint.heading import Heading

    table._heading = Heading(table_info=dict(conn=table._connection, database=table.database,
                                             table_name=table._table_name, context=None))


def share_lineage(table, source, names) -> None:
    """Give ``table``'s attributes ``names`` the lineage of ``source``'s, so the two join on them."""
    from datajoint.lineage import delete_table_lineages, ensure_lineage_table, get_lineage, insert_lineages

    connection = table.connection
    ensure_lineage_table(connection, table.database)
    delete_table_lineages(connection, table.database, table.table_name)
    insert_lineages(connection, table.database, [
        (table.table_name, name, get_lineage(connection, source.database, source.table_name, name)
         or f"{source.database}.{source.table_name}.{name}") for name in names])


def user_table_base() -> type:
    """Return DataJoint's base class of Manual, Lookup, Imported and Computed tables."""
    from datajoint.user_tables import UserTable

    return UserTable


# --- the store -------------------------------------------------------------------------


def store_backend(connection, store: str):
    """Return the storage backend of DataJoint's store ``store``."""
    from datajoint.hash_registry import get_store_backend

    return get_store_backend(store, config=connection._config)


def full_store_path(backend, path: str) -> str:
    """Return the backend's full path (or URL) of ``path`` within the store."""
    return backend._full_path(path)


SCHEMA_ADDRESSED = ("object", "npy")  # codecs whose values are written under the row's key: <object@>, <npy@>


def object_folders(table, key: dict) -> list[tuple]:
    """Return ``(backend, folder)`` of each store folder where ``table``'s row for ``key`` (and its parts') keep values.

    DataJoint writes ``<object@>`` and ``<npy@>`` values under
    ``{schema_prefix}/{schema}/{table}/{key}/{attribute}_{token}{ext}``, where ``table`` is the
    table's name for an insert and its class's name for a staged insert (both are returned);
    a part table's rows under its master's key folder.  Empty when the tables have no such
    attribute (or the store partitions its paths, where a key has no one folder).
    """
    import datajoint.storage

    folders = []
    for each in (table, *(part() for part in _parts(table))):
        stores = {attribute.store for attribute in each.heading.attributes.values()
                  if attribute.codec is not None and attribute.codec.name in SCHEMA_ADDRESSED}
        for store in stores:
            spec = settings_of(table.connection).get_store_spec(store)
            if spec.get("partition_pattern"):
                continue
            backend = store_backend(table.connection, store)
            for folder_name in dict.fromkeys((each.table_name, each.class_name)):
                path, _ = datajoint.storage.build_object_path(
                    schema=each.database, table=folder_name, field="x", ext=None,
                    primary_key={name: key[name] for name in table.primary_key}, schema_prefix=spec["schema_prefix"])
                folders.append((backend, full_store_path(backend, path.rpartition("/")[0])))
    return folders


def npy_location(reference) -> tuple:
    """Return ``(filesystem, full path)`` of an ``<npy@>`` value (DataJoint's ``NpyRef``)."""
    backend = reference._backend
    return backend.fs, backend._full_path(reference.path)


def _parts(table) -> list:
    master = type(table)
    return [value for value in vars(master).values()
            if isinstance(value, type) and issubclass(value, user_table_base()) and getattr(value, "master", None)
            is master]
