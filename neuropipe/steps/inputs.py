"""What a step's positional parameters read: names that tables provide.

A step's function names its inputs by its positional parameters (``def smoothed(image)``);
each name is looked up here, among the names tables have declared they provide.  The bundled
pipeline provides ``image`` (:class:`schemas.volume.Volume`), ``probability``
(:class:`schemas.membrane.MembraneMap`), ``labels`` and ``cells``
(:class:`schemas.detection.CellDetection`); every step provides its own name to the steps
after it, as Dagster's assets do.  A lab's own table joins in with one call::

    steps.provide("spikes", Recording, lambda key: (Recording & key).fetch1("spikes"))
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
        The DataJoint table whose rows it comes from: the step's table depends on it.
    fetch : callable
        ``fetch(key) -> value`` for one key of the step's table (arrays sliced lazily).
    """

    name: str
    table: type
    fetch: Callable[[dict], Any]


_PROVIDED: dict[str, Provided] = {}


def provide(name: str, table: type, fetch: Callable[[dict], Any] | None = None) -> Provided:
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

    Returns
    -------
    Provided
    """
    provided = Provided(name, table, fetch or (lambda key: _attribute(table, key, name)))
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
