"""The bundled neuropipe pipeline: volume -> membrane map -> cell detections -> metrics.

Each module holds one DataJoint schema, created unbound so that importing it touches no
database.  :func:`activate` binds all four, in dependency order, to schemas named
``<prefix>volume``, ``<prefix>membrane``, ``<prefix>detection`` and ``<prefix>metrics``.
The worker and the demo call it with the configured prefix; tests call it with their own.
"""

from schemas import detection, membrane, metrics, volume

MODULES = (volume, membrane, detection, metrics)


def activate(prefix: str, connection=None) -> None:
    """Bind the pipeline's schemas to ``<prefix><module>`` on ``connection``.

    Parameters
    ----------
    prefix : str
        Schema name prefix, e.g. ``"neuropipe_"``.
    connection : datajoint.Connection, optional
        Default: DataJoint's global connection.

    Notes
    -----
    A pipeline already bound elsewhere is re-bound (tests bind it to one server after another).
    """
    if connection is None:
        from neuropipe.database import import_datajoint

        connection = import_datajoint().conn()
    for module in MODULES:
        name = prefix + module.__name__.rsplit(".", 1)[-1]
        if module.schema.database != name or module.schema.connection is not connection:
            module.schema.database = None
        module.schema.activate(name, connection=connection)


def drop(connection=None) -> None:
    """Drop the pipeline's schemas and everything in them, downstream first."""
    for module in reversed(MODULES):
        if module.schema.database is not None and module.schema.exists:
            module.schema.drop(prompt=False)
