"""The bundled neuropipe pipeline: volume -> membrane map -> cell detections -> metrics (-> export).

Each module holds one DataJoint schema, created unbound so that importing it touches no
database.  :func:`activate` binds all six, in dependency order, to schemas named
``<prefix>volume``, ``<prefix>membrane``, ``<prefix>detection``, ``<prefix>metrics``,
``<prefix>nuclei`` (nuclei learned from annotated cells) and ``<prefix>export``.
Without a prefix it binds the configured one (``neuropipe.connect()`` does that); tests pass
their own.
"""

from neuropipe.config import load_settings
from neuropipe.database import bind_schema, drop_schema, import_datajoint
from schemas import detection, export, membrane, metrics, nuclei, volume

CHAIN = (volume, membrane, detection, metrics)  # what the demo runs: image to scores
MODULES = CHAIN + (nuclei, export)  # nuclei: the learned option, for labs with annotated nuclei


def activate(prefix: str | None = None, connection=None) -> None:
    """Bind the pipeline's schemas to ``<prefix><module>`` on ``connection``.

    Parameters
    ----------
    prefix : str, optional
        Schema name prefix, e.g. ``"neuropipe_"``; default: the configured one
        (``neuropipe.schema_prefix``, ``NEUROPIPE_SCHEMA_PREFIX``).
    connection : datajoint.Connection, optional
        Default: DataJoint's global connection.

    Notes
    -----
    A pipeline already bound elsewhere is re-bound (tests bind it to one server after another).
    """
    if prefix is None:
        prefix = load_settings().schema_prefix
    if connection is None:
        connection = import_datajoint().conn()
    for module in MODULES:
        bind_schema(module.schema, prefix + module.__name__.rsplit(".", 1)[-1], connection)


def drop() -> None:
    """Drop the pipeline's schemas and everything in them, downstream first."""
    for module in reversed(MODULES):
        drop_schema(module.schema)
