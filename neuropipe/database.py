"""Connecting to the database that coordinates the pipeline.

:func:`connect` turns :class:`~neuropipe.config.Settings` into a live DataJoint connection:
it configures ``datajoint.config`` (server, store, job bookkeeping), starts the embedded
PostgreSQL when no server is configured, and replaces DataJoint's low-level connection
errors with one that names the server and says how to configure another.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
import warnings

from neuropipe import store
from neuropipe.config import Settings, load_settings
from neuropipe.errors import DatabaseUnreachableError

logger = logging.getLogger(__name__)

STORE_NAME = "neuropipe"
_DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306}

# Provenance the pipeline relies on: job rows are kept after success (who ran what, where,
# when, for how long) and every computed row carries its start time, duration and version.
_JOB_BOOKKEEPING = {"jobs.keep_completed": True, "jobs.add_job_metadata": True}


def import_datajoint():
    """Import datajoint without its import-time warnings (it looks for a file we do not use)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import datajoint

    return datajoint


def configure_datajoint(settings: Settings) -> None:
    """Write the settings DataJoint needs into ``datajoint.config``.

    Parameters
    ----------
    settings : Settings
        Resolved neuropipe settings.
    """
    dj = import_datajoint()
    for key, value in {**_JOB_BOOKKEEPING, **settings.datajoint}.items():
        dj.config[key] = value
    store.prepare(settings)
    dj.config["stores"] = {"default": STORE_NAME, STORE_NAME: store.datajoint_spec(settings)}


def server_address(settings: Settings) -> Settings:
    """Return settings that point at a running server, starting the embedded one if needed."""
    if not settings.embedded:
        return settings.with_overrides(
            port=settings.port or _DEFAULT_PORTS[settings.backend], user=settings.user or "root"
        )
    from neuropipe.embedded import EmbeddedPostgres

    info = EmbeddedPostgres().ensure_running()
    return settings.with_overrides(host=info.host, port=info.port, user=info.user, backend="postgresql")


def connect(settings: Settings | None = None):
    """Open a DataJoint connection as configured.

    Parameters
    ----------
    settings : Settings, optional
        Default: :func:`neuropipe.config.load_settings`.

    Returns
    -------
    datajoint.Connection
        Also installed as DataJoint's global connection (``dj.conn()``).

    Raises
    ------
    DatabaseUnreachableError
        If the server does not answer; the message names it and how to configure another.
    """
    settings = server_address(settings or load_settings())
    configure_datajoint(settings)
    dj = import_datajoint()
    for key, value in {
        "database.host": settings.host,
        "database.port": settings.port,
        "database.user": settings.user,
        "database.password": settings.password,
        "database.backend": settings.backend,
        # the embedded server listens on loopback only and has no certificate
        **({"database.use_tls": False} if settings.host in ("127.0.0.1", "localhost") else {}),
    }.items():
        dj.config[key] = value
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            connection = dj.conn(reset=True)
    except Exception as error:
        raise DatabaseUnreachableError(_unreachable_message(settings, error)) from error
    logger.info("connected to %s at %s:%s", settings.backend, settings.host, settings.port)
    return connection


def _unreachable_message(settings: Settings, error: Exception) -> str:
    origin = f"from {settings.source}" if settings.source else "(no dj_local_conf.json found)"
    return (
        f"Cannot connect to the {settings.backend} server at {settings.host}:{settings.port} "
        f"as user {settings.user!r}: {error.__class__.__name__}: {error}. "
        f"Settings come {origin} and the environment. Check that the server is running, "
        "or point neuropipe at another one with DJ_HOST, DJ_PORT, DJ_USER, DJ_PASS and DJ_BACKEND "
        "(or database.* in dj_local_conf.json); leave database.host empty and DJ_HOST unset to use "
        "the embedded PostgreSQL."
    )


def open_like(connection):
    """Open a second, independent connection to the server ``connection`` talks to.

    Used by threads (the worker heartbeat) that must not share the main connection.
    """
    dj = import_datajoint()
    info = connection.conn_info
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dj.Connection(info["host"], info["user"], info["passwd"], port=info["port"],
                             use_tls=info.get("ssl_input"), backend=connection.adapter.backend)


def retrying_declaration(declare, *args, attempts: int = 5, **kwargs):
    """Call ``declare`` (a schema activation, a job table's creation), retrying on a race.

    Workers started together on a fresh database all try to create the same schemas and
    tables; the servers let one win and fail the others ("already exists", or a duplicate
    row in PostgreSQL's catalog).  Trying again finds the object made and goes on.
    """
    for attempt in range(attempts):
        try:
            return declare(*args, **kwargs)
        except Exception as error:
            if attempt == attempts - 1 or isinstance(error, ImportError):
                raise
            logger.debug("declaration raced with another worker (%s); trying again", error)
            time.sleep(0.2 + random.random())


def sql_value(value, connection):
    """Return ``value`` as a query argument of ``connection``'s driver: uuids as MySQL's binary(16) or text."""
    if isinstance(value, uuid.UUID):
        return value.bytes if "mysql" in type(connection.adapter).__name__.lower() else str(value)
    return value


def key_in(connection, names, keys) -> tuple[str, list]:
    """Return ``(names) IN ((...), ...)`` matching ``keys`` and its query arguments.

    One statement for many keys, with every value a query argument (nothing spliced in).
    """
    quote = connection.adapter.quote_identifier
    row = "(" + ", ".join(["%s"] * len(names)) + ")"
    args = [sql_value(key[name], connection) for key in keys for name in names]
    return f"({', '.join(quote(name) for name in names)}) IN ({', '.join([row] * len(keys))})", args


def case_by_key(connection, names, keys, values) -> tuple[str, list]:
    """Return a ``CASE`` expression that is ``values[i]`` on the row of ``keys[i]``, and its arguments.

    With :func:`key_in`, sets a different value on each of many rows in one ``UPDATE``.
    """
    match = " AND ".join(f"{connection.adapter.quote_identifier(name)}=%s" for name in names)
    args = []
    for key, value in zip(keys, values):
        args += [sql_value(key[name], connection) for name in names] + [value]
    return "CASE " + " ".join([f"WHEN {match} THEN %s"] * len(keys)) + " END", args


def insert_in_parts(table, rows, size: int = 5000) -> None:
    """Insert ``rows`` (any iterable, a generator best) ``size`` at a time.

    DataJoint builds one statement of all the rows it is given; a detection's hundred
    thousand cells would take some 100 MB of dicts and SQL text at once.
    """
    part = []
    for row in rows:
        part.append(row)
        if len(part) == size:
            table.insert(part)
            part = []
    if part:
        table.insert(part)


def bind_schema(schema, name: str, connection) -> None:
    """Activate ``schema`` as ``name`` on ``connection``, re-binding it if bound elsewhere.

    DataJoint refuses to re-activate a schema object under another name; tests (and a
    notebook switching servers) bind the same table classes to one schema after another.
    """
    if schema.database != name or schema.connection is not connection:
        schema.database = None
    schema.activate(name, connection=connection)


def drop_schema(schema) -> None:
    """Drop a bound schema and its tables if it exists (no prompt)."""
    if schema.database is not None and schema.exists:
        schema.drop(prompt=False)
