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
    accepted = set(_keywords(kernel, exclude))
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise BadInputError(
            f"{what}: unknown parameter(s) {', '.join(unknown)}; accepted: {', '.join(sorted(accepted))}."
        )
    for name, (predicate, description) in rules.items():
        if name in params and params[name] is not None and not predicate(params[name]):
            raise BadInputError(f"{what}: {name}={params[name]!r} is invalid; it must be {description}.")
    return params


def kernel_defaults(kernel: Callable, exclude=()) -> dict:
    """Return the parameters of ``kernel`` and their defaults, as its signature states them.

    Parameters
    ----------
    kernel : callable
        A ``neuropipe.ops`` function (or a step's); its parameters are its keyword-only arguments and
        those with defaults.
    exclude : iterable of str, optional
        Keyword arguments that are not parameters (chosen by the worker).

    Returns
    -------
    dict
        Name to default, in signature order (a keyword without a default is left out).

    Examples
    --------
    >>> def kernel(data, *, size=3, voxel_size=None):
    ...     pass
    >>> kernel_defaults(kernel, exclude=("voxel_size",))
    {'size': 3}
    """
    return {name: parameter.default for name, parameter in _keywords(kernel, exclude).items()
            if parameter.default is not inspect.Parameter.empty}


def _keywords(kernel: Callable, exclude) -> dict:
    """Return the settings of ``kernel`` not in ``exclude``, by name: keyword-only, or with a default."""
    return {name: parameter for name, parameter in inspect.signature(kernel).parameters.items()
            if name not in exclude and (parameter.kind == inspect.Parameter.KEYWORD_ONLY or (
                parameter.kind == inspect.Parameter.POSITIONAL_OR_KEYWORD
                and parameter.default is not inspect.Parameter.empty))}


def one_of(choices) -> tuple[Callable[[Any], bool], str]:
    """Return the rule (predicate, description) of a parameter that takes one of ``choices``.

    Examples
    --------
    >>> predicate, description = one_of(("spheres", "blobs"))
    >>> predicate("blobs"), predicate("magic"), description
    (True, False, 'one of spheres, blobs')
    """
    choices = tuple(choices)
    return (lambda value: value in choices), "one of " + ", ".join(choices)


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
    the parameters feed), ``rules`` and ``not_params`` (keyword arguments of the kernel that
    the worker chooses); unless it gives its own, its definition is::

        <key_name> : char(16)    # content hash of params
        ---
        params : json            # keyword arguments of the kernel
        description = "" : varchar(255)

    A set stores the parameters as given; what it leaves out takes the kernel's defaults, which
    only the kernel's signature states (:meth:`defaults`, :meth:`fetch_effective`).
    """

    key_name: str = ""
    rules: dict = {}
    not_params: tuple = ()

    kernel = None

    def __init_subclass__(cls, **kwargs):
        """Give a subclass that names its key and kernel the definition above, unless it has its own."""
        super().__init_subclass__(**kwargs)
        if cls.key_name and cls.kernel is not None and "definition" not in vars(cls):
            kernel = cls.kernel.__name__
            if cls.kernel.__module__.startswith("neuropipe.ops"):
                kernel = f"ops.{kernel}"
            cls.definition = f"""
            {cls.key_name} : char(16)             # content hash of params
            ---
            params : json                         # keyword arguments of {kernel}
            description = "" : varchar(255)
            """

    @classmethod
    def defaults(cls) -> dict:
        """Return every parameter of the kernel with its default (what a set that leaves it out runs with)."""
        return kernel_defaults(cls.kernel, exclude=cls.not_params)

    @classmethod
    def effective(cls, params: dict) -> dict:
        """Return ``params`` completed with the kernel's defaults for the parameters they leave out."""
        return {**cls.defaults(), **_decoded(params)}

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
        """Return the parameter dict stored under ``key``, as it was inserted.

        Read with one plain ``SELECT`` by primary key: every job of a table fetches its set,
        and DataJoint's ``fetch1`` costs several times the round trip in Python.
        """
        quote = self.connection.adapter.quote_identifier
        row = self.connection.query(f"SELECT {quote('params')} FROM {self.full_table_name} "
                                    f"WHERE {quote(self.key_name)}=%s", args=(key[self.key_name],)).fetchone()
        if row is None:
            raise BadInputError(f"{type(self).__name__}: no parameter set {key[self.key_name]!r}")
        return _decoded(row[0])

    def fetch_effective(self, key: dict) -> dict:
        """Return the parameters stored under ``key`` completed with the kernel's defaults."""
        return self.effective(self.fetch_params(key))


def _decoded(params) -> dict:
    """Return a stored ``params`` value (a dict, or JSON text on some backends) as a dict."""
    return json.loads(params) if isinstance(params, str) else dict(params)
