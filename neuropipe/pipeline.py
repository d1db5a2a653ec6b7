"""A pipeline is modules of DataJoint tables: loading them, and finding their tables (one place for both).

The worker serves a pipeline's auto-populated tables (:func:`pipeline_tables`); sweeps,
scores, the report and the viewer look tables up by class name (:func:`table_classes`).
A package such as the bundled ``schemas`` names its modules in ``MODULES``; a module that
exposes ``activate(prefix)`` is bound under the configured prefix, a plain module of tables
binds itself when imported.
"""

from __future__ import annotations

import fnmatch
import importlib
import inspect
import sys
from types import ModuleType

from neuropipe.database import import_datajoint, retrying_declaration


def load_pipeline(names, *, prefix: str | None = None) -> list[ModuleType]:
    """Import pipeline modules (by name, or given as modules) and make sure their schemas are bound.

    A module (or package) that exposes ``activate(prefix, connection)``, as the bundled
    ``schemas`` does, is activated with ``prefix``; a plain user module that binds its own
    schemas at import time is used as it is.
    """
    modules = [name if isinstance(name, ModuleType) else retrying_declaration(importlib.import_module, name)
               for name in names]
    for module in modules:
        if callable(getattr(module, "activate", None)) and prefix is not None:
            retrying_declaration(module.activate, prefix)
    return modules


def table_classes(modules, *, defined_there: bool = False) -> dict[str, type]:
    """Return the bound DataJoint table classes of pipeline ``modules``, by class name.

    Parameters
    ----------
    modules : iterable of modules
        A package contributes the tables of its submodules listed in ``MODULES`` too.
    defined_there : bool
        Only classes defined in the modules, not those they import (``schemas.metrics``
        imports ``CellDetection``): what a worker serves.  By default both, so that a
        table is found from any module that names it.
    """
    dj = import_datajoint()
    found = {}
    for module in _expand(modules):
        for value in vars(module).values():
            if (inspect.isclass(value) and issubclass(value, dj.Table) and getattr(value, "database", None)
                    and hasattr(value, "definition") and (not defined_there or value.__module__ == module.__name__)):
                found.setdefault(value.__name__, value)
    return found


def pipeline_tables(modules, patterns=()) -> list[type]:
    """Return the Imported and Computed table classes of ``modules``, upstream first.

    Parameters
    ----------
    modules : list of modules
        A package contributes the tables of its submodules listed in ``MODULES`` too.
    patterns : list of str, optional
        Keep only tables whose class name or ``module.Class`` matches one of these
        shell-style patterns (``--tables``).
    """
    dj = import_datajoint()
    tables = {cls.full_table_name: cls for cls in table_classes(modules, defined_there=True).values()
              if issubclass(cls, (dj.Imported, dj.Computed)) and _matches(cls, patterns)}
    return upstream_first(tables.values())


def classes_around(tables) -> dict[str, type]:
    """Return ``tables`` and every table class their modules name, by class name (the report's lookup)."""
    modules = [module for module in {sys.modules.get(table.__module__) for table in tables} if module]
    return {**table_classes(modules), **{table.__name__: table for table in tables}}


def upstream_first(tables) -> list[type]:
    """Return the table classes ``tables`` in dependency order: each after the tables it depends on."""
    tables = list(tables)
    if not tables:
        return []
    connection = tables[0].connection
    connection.dependencies.load()
    order = {name: index for index, name in enumerate(connection.dependencies.topo_sort())}
    return sorted(tables, key=lambda cls: order.get(cls.full_table_name, len(order)))


def _matches(cls, patterns) -> bool:
    names = (cls.__name__, f"{cls.__module__}.{cls.__name__}")
    return not patterns or any(fnmatch.fnmatch(name, pattern) for pattern in patterns for name in names)


def _expand(modules):
    for module in modules:
        yield module
        yield from getattr(module, "MODULES", ())
