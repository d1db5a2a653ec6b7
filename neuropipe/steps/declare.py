"""A step from a Python function: a parameter-set Lookup and a Computed table, generated.

::

    schema = dj.Schema("lab_smoothing")

    @steps.step(schema)
    def smoothed(image, *, sigma: float = 1.0) -> np.ndarray:
        return scipy.ndimage.gaussian_filter(np.asarray(image, np.float32), sigma)

declares two ordinary DataJoint classes in the function's module:

- ``SmoothedParams`` (Lookup): parameter sets keyed by the hash of their content
  (:class:`~neuropipe.params.ParamSet`); the settings are the function's parameters with
  defaults, a set that leaves one out runs with the function's default, and a value is
  checked at insert against the parameter's annotation (``float``, ``int``, ``bool``,
  ``str``, a ``typing.Literal`` of choices).  It holds the empty set (the function's
  defaults) from the start, so a step is made as soon as its inputs are;
- ``Smoothed`` (Computed): keyed by the tables that provide the function's positional
  parameters (:mod:`~neuropipe.steps.inputs`: ``image`` is ``Volume``; an annotation only
  restricts the keys made) and by ``SmoothedParams``; its ``make()`` fetches the inputs,
  calls the function and stores what it returns, as the return annotation declares
  (:mod:`~neuropipe.steps.outputs`).

The table is what the decorator returns, with the function as ``Smoothed.function``; it is
queried, joined and populated like any other (by neuropipe's workers or stock DataJoint).
Its provenance code hash is the function's source and its module's files, so editing the
function makes its rows stale.  ``gpu`` and ``memory_gb`` become the table's ``resources``;
``transient_errors`` names further exceptions worth another attempt.

Steps that share their options use one Lookup, as the bundled metrics share
``MetricsParams``: ``@steps.step(schema, params=MetricsParams)`` declares no ``<Name>Params``;
each setting of the function must be a parameter of that Lookup's kernel, with the same
default, and ``make()`` passes the function only its own settings of a set.
"""

from __future__ import annotations

import inspect
import sys
import typing

from neuropipe.database import import_datajoint
from neuropipe.errors import ConfigurationError
from neuropipe.params import ParamSet, one_of, params_hash
from neuropipe.steps import blocks, outputs
from neuropipe.steps.inputs import Restricted, parents, provide, provided

RULES = {
    float: (lambda value: isinstance(value, (int, float)) and not isinstance(value, bool), "a number"),
    int: (lambda value: isinstance(value, int) and not isinstance(value, bool), "an integer"),
    bool: (lambda value: isinstance(value, bool), "true or false"),
    str: (lambda value: isinstance(value, str), "a string"),
}


def step(schema, function=None, *, name: str | None = None, params=None, block=None, halo=None, gpu: bool = False,
         memory_gb: float = 0.0, transient_errors: tuple = ()):
    """Declare a step from ``function``: a parameter-set Lookup and a Computed table (see the module).

    Use as ``@step(schema)`` or ``step(schema, function)``.

    Parameters
    ----------
    schema : datajoint.Schema
        Where the two tables are declared (bound now, or later by its ``activate``).
    function : callable
        Positional parameters without defaults name its inputs; parameters with defaults
        are its settings; its return annotation says what is stored.
    name : str, optional
        The table's class name (default: the function's name in CamelCase).
    params : type, optional
        A :class:`~neuropipe.params.ParamSet` Lookup shared with other tables, instead of
        ``<Name>Params``: every setting of the function must be a parameter of its kernel,
        with the same default.
    block : tuple of 3 int, optional
        Run one job per block of this ZYX shape and assemble one chunked result
        (:mod:`~neuropipe.steps.blocks`); default: one job per volume.
    halo : tuple of 3 int, optional
        With ``block``: voxels read around each block (the function's reach).
    gpu : bool
        Only workers with a GPU take its jobs.
    memory_gb : float
        Only workers with this much memory take its jobs.
    transient_errors : tuple of exception types
        Failures worth another attempt, besides the usual ones.

    Returns
    -------
    type
        The Computed table class.
    """
    if function is None:
        return lambda function: step(schema, function, name=name, params=params, block=block, halo=halo, gpu=gpu,
                                     memory_gb=memory_gb, transient_errors=transient_errors)
    return _declare(schema, function, name or _camel(function.__name__), params=params, block=block, halo=halo,
                    resources={"gpu": gpu, "memory_gb": memory_gb} if gpu or memory_gb else {},
                    transient_errors=tuple(transient_errors))


def signature_parts(function) -> tuple[list[str], dict]:
    """Return a step function's input names (parameters without defaults) and settings (name -> parameter)."""
    inputs, settings = [], {}
    for parameter in inspect.signature(function).parameters.values():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            raise ConfigurationError(f"step {function.__name__}: *{parameter.name} cannot be stored; name each "
                                     f"input and setting")
        if parameter.default is inspect.Parameter.empty:
            inputs.append(parameter.name)
        else:
            settings[parameter.name] = parameter
    return inputs, settings


def _declare(schema, function, class_name: str, *, params, block, halo, resources: dict, transient_errors: tuple):
    dj = import_datajoint()
    inputs, settings = signature_parts(function)
    sources = [provided(name, function.__name__) for name in inputs]
    depends, restricted_by = parents(sources)
    hints = typing.get_type_hints(function)
    if "return" not in hints:
        raise ConfigurationError(f"step {function.__name__}: annotate what it returns (-> numpy.ndarray, "
                                 f"float, dict, a TypedDict, ...): that says what is stored")
    stored = outputs.columns(hints["return"], function.__name__, function.__name__)
    module = sys.modules[function.__module__]
    context = {**vars(module), **{table.__name__: table for table in depends + restricted_by}}
    if params is None:
        params = schema(_params_table(function, class_name, inputs, settings, hints), context=context)
        declared = {params.__name__: params}
    else:
        _check_shared(params, settings, function)
        declared = {}
    context[params.__name__] = params
    attributes = {"function": staticmethod(function), "params_table": params, "resources": resources,
                  "transient_errors": transient_errors}
    fetch_settings = _settings(params, settings)
    if block is not None:
        grid, per_block, table = blocks.declare(schema, function, class_name, block=block, halo=halo, sources=sources,
                                                parents=(depends, restricted_by), stored=stored, params=params,
                                                fetch_settings=fetch_settings, context=context, attributes=attributes)
        declared.update({grid.__name__: grid, per_block.__name__: per_block})
    else:
        definition = "\n".join([*(f"-> {table.__name__}" for table in depends), f"-> {params.__name__}", "---",
                                *(column.definition() for column in stored)])
        table = schema(type(class_name, (Restricted, dj.Computed), {
            "__module__": function.__module__,
            "__doc__": inspect.getdoc(function) or f"Made by {function.__module__}.{function.__name__}.",
            "definition": definition, "restricted_by": tuple(restricted_by),
            "make": _make(function, sources, stored, fetch_settings), **attributes}), context=context)
    for name, cls in {**declared, class_name: table}.items():
        setattr(module, name, cls)
    provide(function.__name__, table, _output_fetch(table, stored))
    return table


def _params_table(function, class_name: str, inputs: list, settings: dict, hints: dict) -> type:
    """Return the class ``<Name>Params`` of the function's settings, to be declared."""
    dj = import_datajoint()
    key_name = f"{_snake(class_name)}_id"
    return type(f"{class_name}Params", (ParamSet, dj.Lookup), {
        "__module__": function.__module__,
        "__doc__": f"Parameter sets of {function.__module__}.{function.__name__}, keyed by their hash.",
        "key_name": key_name,
        "kernel": staticmethod(function),
        "not_params": tuple(inputs),
        "rules": _rules(settings, hints),
        "contents": [{key_name: params_hash({}), "params": {}, "description": "the function's defaults"}],
    })


def _check_shared(params, settings: dict, function) -> None:
    """Refuse a shared Lookup that lacks a setting of ``function`` or states another default for it."""
    if not (isinstance(params, type) and issubclass(params, ParamSet)):
        raise ConfigurationError(f"step {function.__name__}: params= takes a ParamSet Lookup, got {params!r}")
    defaults = params.defaults()
    for name, parameter in settings.items():
        if name not in defaults:
            raise ConfigurationError(f"step {function.__name__}: setting {name!r} is not a parameter of "
                                     f"{params.__name__} (its parameters: {', '.join(defaults) or 'none'})")
        if defaults[name] != parameter.default:
            raise ConfigurationError(f"step {function.__name__}: setting {name!r} defaults to {parameter.default!r} "
                                     f"here and to {defaults[name]!r} in {params.__name__}; make them one")


def _settings(params, settings: dict):
    """Return ``fetch(key)``: the function's settings in the parameter set of ``key`` (a shared set has others')."""
    return lambda key: {name: value for name, value in params().fetch_params(key).items() if name in settings}


def _make(function, sources, stored, fetch_settings):
    def make(self, key):
        """Fetch the inputs, call the step's function with the key's parameter set, store what it returns."""
        arguments = [source.fetch(key) for source in sources]
        found = outputs.values(function(*arguments, **fetch_settings(key)), stored, function.__name__)
        limit = outputs.stored_limit_bytes()
        if not outputs.needs_zarr(found, stored, limit):
            self.insert1({**key, **outputs.row(found, stored, limit)})
            return
        with self.staged_insert1 as staged:
            staged.rec.update(key)
            staged.rec.update(outputs.row(found, stored, limit, staged))

    return make


def _output_fetch(table, stored):
    """Return how later steps read this step's output: its one column, or all its columns as a dict."""
    if len(stored) == 1 and stored[0].kind == "array":
        return lambda key: outputs.open_output(table, key, stored[0].name)
    if len(stored) == 1:
        return lambda key: (table & key).fetch1(stored[0].name)
    return lambda key: {column.name: (outputs.open_output(table, key, column.name) if column.kind == "array"
                                      else (table & key).fetch1(column.name)) for column in stored}


def _rules(settings: dict, hints: dict) -> dict:
    rules = {}
    for name in settings:
        hint = hints.get(name)
        if typing.get_origin(hint) is typing.Literal:
            rules[name] = one_of(typing.get_args(hint))
        elif hint in RULES:
            rules[name] = RULES[hint]
    return rules


def _camel(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in name.split("_") if part)


def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() and index else c.lower() for index, c in enumerate(name))
