"""What a step stores: its columns, from the function's return annotation.

=========================================  ===============================================
return annotation                          stored as
=========================================  ===============================================
``numpy.ndarray``                          an array in the store: ``.npy`` up to
                                           ``neuropipe.zarr_above_mb``, a chunked zarr array
                                           above (columns ``<name>`` and ``<name>_zarr``)
``float``, ``int``, ``bool``, ``str``      one column of that type (``float64``, ``int64``, ...)
``numpy.int32``, ``numpy.float32``, ...    one column of exactly that type (``int32``, ...)
``dict``                                   one ``json`` column (small dicts)
a ``typing.TypedDict``                     one column per key, each as above
=========================================  ===============================================

A single value is stored under the step's name; a ``TypedDict`` under its keys.  A numpy
scalar type (``int32``, ``int64``, ``float32``, ``float64``, ``bool_``) takes a Python or
numpy value of its kind: ``3`` for an ``int32`` column, refused where it does not fit.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, replace

import numpy as np

from neuropipe.config import load_settings
from neuropipe.database import STORE_NAME
from neuropipe.errors import ConfigurationError
from neuropipe.io import stored

SCALARS = {float: "float64", int: "int64", bool: "bool", str: "varchar(1024)", np.float64: "float64",
           np.float32: "float32", np.int64: "int64", np.int32: "int32", np.bool_: "bool"}
PYTHON = {np.float64: float, np.float32: float, np.int64: int, np.int32: int, np.bool_: bool}  # the values they take


@dataclass(frozen=True)
class Column:
    """One stored output of a step: its name, what it holds and its DataJoint type."""

    name: str
    kind: str  # "array", "scalar" or "json"
    python_type: type
    in_record: bool = False  # a key of a TypedDict the function returns (else the function's one value)

    def definition(self) -> str:
        """Return the attribute line(s) of the table definition."""
        if self.kind == "array":
            return (f"{self.name} = null : <npy@{STORE_NAME}>\n"
                    f"{self.name}_zarr = null : <object@{STORE_NAME}>  # above neuropipe.zarr_above_mb")
        if self.kind == "json":
            return f"{self.name} : json"
        return f"{self.name} : {SCALARS[self.python_type]}"


def columns(annotation, name: str, step: str) -> list[Column]:
    """Return the columns a return annotation declares (see the module's table)."""
    hints = _typed_dict_fields(annotation)
    if hints is not None:
        return [replace(_column(value, key, step), in_record=True) for key, value in hints.items()]
    return [_column(annotation, name, step)]


def _column(annotation, name: str, step: str) -> Column:
    if annotation is np.ndarray:
        return Column(name, "array", np.ndarray)
    if annotation in SCALARS:
        return Column(name, "scalar", annotation)
    if annotation is dict or typing.get_origin(annotation) is dict:
        return Column(name, "json", dict)
    raise ConfigurationError(
        f"step {step}: cannot store {getattr(annotation, '__name__', annotation)!r} ({name}); annotate what the "
        f"function returns as numpy.ndarray, float, int, bool, str, a numpy scalar type (numpy.int32, ...), dict "
        f"or a TypedDict of those")


def _typed_dict_fields(annotation):
    if isinstance(annotation, type) and issubclass(annotation, dict) and hasattr(annotation, "__annotations__") \
            and annotation is not dict:
        return typing.get_type_hints(annotation)
    return None


def values(result, outputs: list[Column], step: str) -> dict:
    """Return the stored values of ``result`` by column, checked against what the annotation declares."""
    if not outputs[0].in_record:
        result = {outputs[0].name: result}
    elif not isinstance(result, dict):
        raise TypeError(f"step {step} should return a dict of {', '.join(c.name for c in outputs)}, "
                        f"got {type(result).__name__}")
    missing = [column.name for column in outputs if column.name not in result]
    if missing:
        raise TypeError(f"step {step} returned no {', '.join(missing)}")
    found = {}
    for column in outputs:
        value = result[column.name]
        if column.kind == "array":
            if not isinstance(value, np.ndarray) and not hasattr(value, "__array__"):
                raise TypeError(f"step {step}: {column.name} should be an array, got {type(value).__name__}")
            value = np.asarray(value)
        elif column.kind == "json":
            if not isinstance(value, dict):
                raise TypeError(f"step {step}: {column.name} should be a dict, got {type(value).__name__}")
        else:
            value = _scalar(value, column, step)
        found[column.name] = value
    return found


def _scalar(value, column: Column, step: str):
    if isinstance(value, np.generic):
        value = value.item()
    wanted = PYTHON.get(column.python_type, column.python_type)
    if wanted is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, wanted) or (wanted is int and isinstance(value, bool)):
        raise TypeError(f"step {step}: {column.name} should be {column.python_type.__name__}, "
                        f"got {type(value).__name__}")
    if wanted is int and column.python_type is not int:
        limits = np.iinfo(column.python_type)
        if not limits.min <= value <= limits.max:
            raise TypeError(f"step {step}: {column.name}={value} does not fit {column.python_type.__name__}")
    return value


def row(found: dict, outputs: list[Column], limit: float, staged=None) -> dict:
    """Return the row attributes for ``found``; arrays over ``limit`` bytes go into ``staged``'s store as zarr."""
    attributes = {}
    for column in outputs:
        value = found[column.name]
        if column.kind != "array":
            attributes[column.name] = value
        elif staged is not None and value.nbytes > limit:
            target = stored.create_zarr(staged.store(f"{column.name}_zarr", ".zarr"), value.shape, value.dtype)
            target[...] = value
        else:
            attributes[column.name] = value
    return attributes


def needs_zarr(found: dict, outputs: list[Column], limit: float) -> bool:
    """Return whether any array of ``found`` is over ``limit`` bytes (:func:`stored_limit_bytes`)."""
    return any(column.kind == "array" and found[column.name].nbytes > limit for column in outputs)


def stored_limit_bytes() -> float:
    """Return the size above which an array is stored as chunked zarr (``neuropipe.zarr_above_mb``)."""
    return load_settings().zarr_above_mb * 1e6


def open_output(table: type, key: dict, name: str):
    """Return a step's stored array ``name`` for ``key``, sliced lazily (numpy or zarr)."""
    small, chunked = (table & key).fetch1(name, f"{name}_zarr")
    return stored.open_stored(chunked if small is None else small)
