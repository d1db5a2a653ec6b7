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
  parameters (:mod:`~neuropipe.steps.inputs`: ``image`` is ``Volume``) and by
  ``SmoothedParams``; its ``make()`` fetches the inputs, calls the function and stores what
  it returns, as the return annotation declares (:mod:`~neuropipe.steps.outputs`).

The table is what the decorator returns, with the function as ``Smoothed.function``; it is
queried, joined and populated like any other (by neuropipe's workers or stock DataJoint).
Its provenance code hash is the function's source and its module's files, so editing the
function makes its rows stale.  ``gpu`` and ``memory_gb`` become the table's ``resources``;
``transient_errors`` names further exceptions worth another attempt.
"""

from __future__ import annotations

import inspect
import sys
import typing

from neuropipe.database import import_datajoint
from neuropipe.errors import ConfigurationError
from neuropipe.params import ParamSet, one_of, params_hash
from neuropipe.steps import blocks, outputs
from neuropipe.steps.inputs import provide, provided

RULES = {
    float: (lambda value: isinstance(value, (int, float)) and not isinstance(value, bool), "a number"),
    int: (lambda value: isinstance(value, int) and not isinstance(value, bool), "an integer"),
    bool: (lambda value: isinstance(value, bool), "true or false"),
    str: (lambda value: isinstance(value, str), "a string"),
}


def step(schema, function=None, *, name: str | None = None, block=None, halo=None, gpu: bool = False,
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
        return lambda function: step(schema, function, name=name, block=block, halo=halo, gpu=gpu,
                                     memory_gb=memory_gb, transient_errors=transient_errors)
    return _declare(schema, function, name or _camel(function.__name__), block=block, halo=halo,
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


def _declare(schema, function, class_name: str, *, block, halo, resources: dict, transient_errors: tuple):
    dj = import_datajoint()
    inputs, settings = signature_parts(function)
    sources = [provided(name, function.__name__) for name in inputs]
    hints = typing.get_type_hints(function)
    if "return" not in hints:
        raise ConfigurationError(f"step {function.__name__}: annotate what it returns (-> numpy.ndarray, "
                                 f"float, dict, a TypedDict, ...): that says what is stored")
    stored = outputs.columns(hints["return"], function.__name__, function.__name__)
    module = sys.modules[function.__module__]
    key_name = f"{_snake(class_name)}_id"

    params = type(f"{class_name}Params", (ParamSet, dj.Lookup), {
        "__module__": function.__module__,
        "__doc__": f"Parameter sets of {function.__module__}.{function.__name__}, keyed by their hash.",
        "key_name": key_name,
        "kernel": staticmethod(function),
        "not_params": tuple(inputs),
        "rules": _rules(settings, hints),
        "contents": [{key_name: params_hash({}), "params": {}, "description": "the function's defaults"}],
    })
    upstream = {source.table.__name__: source.table for source in sources}
    context = {**vars(module), **upstream}
    params = schema(params, context=context)
    context[params.__name__] = params
    attributes = {"function": staticmethod(function), "params_table": params, "resources": resources,
                  "transient_errors": transient_errors}
    if block is not None:
        grid, per_block, table = blocks.declare(schema, function, class_name, block=block, halo=halo, sources=sources,
                                                stored=stored, params=params, context=context, attributes=attributes)
        extra = {grid.__name__: grid, per_block.__name__: per_block}
    else:
        definition = "\n".join([*(f"-> {name}" for name in upstream), f"-> {params.__name__}", "---",
                                *(column.definition() for column in stored)])
        table = schema(type(class_name, (dj.Computed,), {
            "__module__": function.__module__,
            "__doc__": inspect.getdoc(function) or f"Made by {function.__module__}.{function.__name__}.",
            "definition": definition, "make": _make(function, sources, stored), **attributes}), context=context)
        extra = {}
    for name, cls in {params.__name__: params, class_name: table, **extra}.items():
        setattr(module, name, cls)
    provide(function.__name__, table, _output_fetch(table, stored))
    return table


def _make(function, sources, stored):
    def make(self, key):
        """Fetch the inputs, call the step's function with the key's parameter set, store what it returns."""
        arguments = [source.fetch(key) for source in sources]
        settings = self.params_table().fetch_params(key)
        found = outputs.values(function(*arguments, **settings), stored, function.__name__)
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
