"""What a step's positional parameters read: names that tables provide.

A step's function names its inputs by its positional parameters (``def smoothed(image)``);
each name is looked up here, among the names tables have declared they provide.  The bundled
pipeline provides ``image`` (:class:`schemas.volume.Volume`), ``probability``
(:class:`schemas.membrane.MembraneMap`), ``labels`` and ``cells``
(:class:`schemas.detection.CellDetection`), ``nuclei`` (:class:`schemas.nuclei.NucleiDetection`),
and, from :mod:`schemas.volume`, ``voxel_size`` and the annotations ``annotated_membrane``,
``annotated_labels`` and ``annotated_cells``; every step provides its own name to the steps
after it, as Dagster's assets do.  A lab's own table joins in with one call::

    steps.provide("spikes", Recording, lambda key: (Recording & key).fetch1("spikes"))

A step's table depends on the tables of its inputs (a ``-> Table`` line each), except those
provided with ``parent=False``: these only restrict the keys it is made for (its
``key_source``), as the annotations say which results are scored without being what they are
made from.  The provider says so, not a rule on primary keys: that one input's key holds
another's is as true of ``image`` (``Volume``) beside an earlier step's output, a parent, as of
an annotation beside a detection; which a table is depends on what its data is, which its
provider knows.  A rule on keys would also change the definitions (and so the tables) of steps
declared already, and need a tie-break between equal keys (``image`` and ``voxel_size``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Callable

from neuropipe.errors import ConfigurationError
from neuropipe.io.stored import open_stored


@dataclass(frozen=True)
class Provided:
    """An input a table provides to steps.

    Attributes
    ----------
    name : str
        The positional parameter name that asks for it.
    table : type
        The DataJoint table whose rows it comes from: the step's table depends on it, or is
        restricted by it (``parent``).
    fetch : callable
        ``fetch(key) -> value`` for one key of the step's table (arrays sliced lazily).
    parent : bool
        Whether the step's table depends on ``table``; False: ``table`` only restricts the
        keys made (see the module).
    """

    name: str
    table: type
    fetch: Callable[[dict], Any]
    parent: bool = True


_PROVIDED: dict[str, Provided] = {}


def provide(name: str, table: type, fetch: Callable[[dict], Any] | None = None, *, parent: bool = True) -> Provided:
    """Declare that ``table`` provides the input ``name`` to steps.

    Parameters
    ----------
    name : str
        The positional parameter name of step functions that read it.
    table : type
        A DataJoint table class.
    fetch : callable, optional
        ``fetch(key) -> value``.  Default: the row's attribute ``name``, a stored array opened
        to be sliced lazily.
    parent : bool
        Whether a step that reads it depends on ``table`` (a ``-> Table`` line).  False: a
        step is keyed by its other inputs' tables and made only for the keys that have a row
        of ``table`` (the key must hold ``table``'s primary key); a step whose every input
        is of this kind is keyed by their tables.

    Returns
    -------
    Provided
    """
    provided = Provided(name, table, fetch or (lambda key: _attribute(table, key, name)), parent)
    _PROVIDED[name] = provided
    return provided


def provided(name: str, step: str = "") -> Provided:
    """Return what provides the input ``name``, or say which names there are."""
    try:
        return _PROVIDED[name]
    except KeyError:
        known = ", ".join(sorted(_PROVIDED)) or "none yet"
        raise ConfigurationError(
            f"step {step or '?'}: no table provides an input named {name!r}; the inputs are {known} "
            f"(declare one with neuropipe.steps.provide, or give the parameter a default to make it a setting)"
        ) from None


def parents(sources: list[Provided]) -> tuple[list[type], list[type]]:
    """Return the tables a step reading ``sources`` depends on and those that only restrict its keys, each once."""
    tables = list(dict.fromkeys(source.table for source in sources))
    depends = [table for table in tables if any(s.parent for s in sources if s.table is table)] or tables
    return depends, [table for table in tables if table not in depends]


class Restricted:
    """Mixin for a step's Computed table: the keys of its parents joined, restricted by ``restricted_by``."""

    restricted_by: tuple = ()

    @property
    def key_source(self):
        """Return the keys to make: DataJoint's (the parents' keys joined) that every ``restricted_by`` table has."""
        query = super().key_source
        for table in self.restricted_by:
            query = query & table.proj()
        return query


def _attribute(table: type, key: dict, name: str):
    value = (table & key).fetch1(name)
    return open_stored(value) if hasattr(value, "fsmap") or hasattr(value, "load") else value


def declared_modules() -> list:
    """Return the modules in which steps were declared, in the order of their first step."""
    modules = []
    for entry in _PROVIDED.values():
        module = sys.modules.get(entry.table.__module__)
        if getattr(entry.table, "function", None) is not None and module is not None and module not in modules:
            modules.append(module)
    return modules
