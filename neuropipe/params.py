"""Parameter sets keyed by a hash of their content.

A parameter table (a DataJoint Lookup) stores each set once, under the first 16 hex digits
of the SHA-256 of its canonical JSON: the same parameters always get the same key, so
inserting a set twice is harmless and a key names its content in every database.
:class:`ParamSet` is the mixin the bundled parameter tables share.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from typing import Any, Callable

from neuropipe.errors import BadInputError


def params_hash(params: dict) -> str:
    """Return the 16-hex-digit content hash of a parameter dict.

    Examples
    --------
    >>> params_hash({"b": 1, "a": 2}) == params_hash({"a": 2, "b": 1})
    True
    """
    canonical = json.dumps(params, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def check_params(
    params: dict, kernel: Callable, rules: dict[str, tuple[Callable[[Any], bool], str]], what: str, exclude=()
) -> dict:
    """Check that ``params`` are keyword arguments ``kernel`` accepts and obey ``rules``.

    Parameters
    ----------
    params : dict
        The parameter set.
    kernel : callable
        The ``neuropipe.ops`` function the parameters are passed to.
    rules : dict
        Maps a parameter name to ``(predicate, description)``; a value failing the predicate
        is rejected with the description.
    what : str
        The parameter table's name, for messages.
    exclude : iterable of str, optional
        Keyword arguments of ``kernel`` that are not parameters (chosen by the worker).

    Returns
    -------
    dict
        ``params``, unchanged.

    Raises
    ------
    BadInputError
        Naming the unknown parameter or the value out of range.
    """
    if not isinstance(params, dict):
        raise BadInputError(f"{what}: parameters must be a dict, got {type(params).__name__}.")
    accepted = {
        name
        for name, parameter in inspect.signature(kernel).parameters.items()
        if parameter.kind == inspect.Parameter.KEYWORD_ONLY and name not in exclude
    }
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise BadInputError(
            f"{what}: unknown parameter(s) {', '.join(unknown)}; accepted: {', '.join(sorted(accepted))}."
        )
    for name, (predicate, description) in rules.items():
        if name in params and params[name] is not None and not predicate(params[name]):
            raise BadInputError(f"{what}: {name}={params[name]!r} is invalid; it must be {description}.")
    return params


def positive(value) -> bool:
    """Return True for a number > 0."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def non_negative(value) -> bool:
    """Return True for a number >= 0."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0


def non_negative_int(value) -> bool:
    """Return True for an integer >= 0."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def fraction(value) -> bool:
    """Return True for a number in [0, 1]."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1


class ParamSet:
    """Mixin for a Lookup table of parameter sets keyed by content hash.

    A subclass defines ``key_name`` (its primary key attribute), ``kernel`` (the ops function
    the parameters feed) and ``rules``; its definition is::

        <key_name> : char(16)    # content hash of params
        ---
        params : json            # keyword arguments of the kernel
        description = "" : varchar(255)
    """

    key_name: str = ""
    rules: dict = {}
    not_params: tuple = ()

    kernel = None

    @classmethod
    def insert_params(cls, params: dict, description: str = "") -> dict:
        """Validate and insert a parameter set; return its primary key.

        Inserting the same parameters again is harmless and returns the same key.

        Raises
        ------
        BadInputError
            If a parameter is unknown to the kernel or out of range.
        """
        check_params(params, cls.kernel, cls.rules, cls.__name__, exclude=cls.not_params)
        key = {cls.key_name: params_hash(params)}
        cls().insert1({**key, "params": params, "description": description}, skip_duplicates=True)
        return key

    def fetch_params(self, key: dict) -> dict:
        """Return the parameter dict stored under ``key``."""
        params = (self & key).fetch1("params")
        return json.loads(params) if isinstance(params, str) else dict(params)
