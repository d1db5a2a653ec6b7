"""Small shared input checks for the :mod:`neuropipe.ops` kernels.

Every check raises :class:`ValueError` with a message that names the
offending argument, the value (or a summary of it) that was received and
what was expected.  Nothing here is part of the public API.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

__all__ = [
    "as_volume",
    "check_fraction",
    "check_nonnegative",
    "check_positive",
    "check_nonnegative_int",
    "check_positive_int",
    "check_voxel_size",
    "check_same_shape",
]


def as_volume(arr, name, *, allow_bool=True):
    """Return ``arr`` as a validated 3-D ZYX numpy array (no copy if possible).

    Parameters
    ----------
    arr : array_like of shape (Z, Y, X)
        Candidate volume.
    name : str
        Argument name used in error messages.
    allow_bool : bool, optional
        Accept a boolean array (default True).

    Returns
    -------
    ndarray of shape (Z, Y, X)
        The input as an ndarray with the dtype it had.

    Raises
    ------
    ValueError
        If the array is not 3-D, is empty, is not numeric, or contains
        NaN or infinite values.

    Examples
    --------
    >>> as_volume(np.zeros((1, 2, 3)), "v").shape
    (1, 2, 3)
    """
    a = np.asarray(arr)
    if a.ndim != 3:
        raise ValueError(
            f"{name} must be a 3-D ZYX volume; got an array with ndim={a.ndim} "
            f"and shape {a.shape}"
        )
    if a.size == 0:
        raise ValueError(f"{name} must not be empty; got shape {a.shape}")
    if a.dtype == np.bool_:
        if not allow_bool:
            raise ValueError(f"{name} must be numeric, not bool; got dtype {a.dtype}")
        return a
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise ValueError(
            f"{name} must have a real numeric dtype; got dtype {a.dtype}"
        )
    if np.issubdtype(a.dtype, np.floating):
        n_nan = int(np.count_nonzero(np.isnan(a)))
        if n_nan:
            raise ValueError(
                f"{name} contains {n_nan} NaN value(s) out of {a.size}; "
                "expected finite values"
            )
        n_inf = int(np.count_nonzero(np.isinf(a)))
        if n_inf:
            raise ValueError(
                f"{name} contains {n_inf} infinite value(s) out of {a.size}; "
                "expected finite values"
            )
    return a


def _is_real(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _checked(name, value, accept, expected, convert):
    """Return ``convert(value)`` where ``accept(value)``; else raise ValueError naming ``name``.

    Parameters
    ----------
    name : str
        Argument name used in error messages.
    value : object
        Candidate value.
    accept : callable
        Predicate on ``value``.
    expected : str
        What the value must be, for the message ("a number in [0, 1]").
    convert : type
        ``float`` or ``int``.

    Returns
    -------
    float or int

    Raises
    ------
    ValueError
        ``"<name> must be <expected>; got <value>"``.
    """
    if not accept(value):
        raise ValueError(f"{name} must be {expected}; got {value!r}")
    return convert(value)


def _is_integer(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_fraction(name, value):
    """Return ``value`` as float after checking it is a real number in [0, 1] (else ValueError naming ``name``).

    Examples
    --------
    >>> check_fraction("threshold", 0.5)
    0.5
    """
    return _checked(name, value, lambda v: _is_real(v) and 0.0 <= float(v) <= 1.0, "a number in [0, 1]", float)


def check_positive(name, value):
    """Return ``value`` as float after checking it is finite and > 0 (else ValueError naming ``name``).

    Examples
    --------
    >>> check_positive("minutes", 2)
    2.0
    """
    return _checked(name, value, lambda v: _is_real(v) and math.isfinite(float(v)) and float(v) > 0,
                    "a finite number > 0", float)


def check_nonnegative(name, value):
    """Return ``value`` as float after checking it is finite and >= 0 (else ValueError naming ``name``).

    Examples
    --------
    >>> check_nonnegative("dilation", 0)
    0.0
    """
    return _checked(name, value, lambda v: _is_real(v) and math.isfinite(float(v)) and float(v) >= 0,
                    "a finite number >= 0", float)


def check_positive_int(name, value):
    """Return ``value`` as int after checking it is an integer >= 1, bool excluded (else ValueError naming ``name``).

    Examples
    --------
    >>> check_positive_int("depth", 3)
    3
    """
    return _checked(name, value, lambda v: _is_integer(v) and v >= 1, "an integer >= 1", int)


def check_nonnegative_int(name, value):
    """Return ``value`` as int after checking it is an integer >= 0, bool excluded (else ValueError naming ``name``).

    Examples
    --------
    >>> check_nonnegative_int("dust", 0)
    0
    """
    return _checked(name, value, lambda v: _is_integer(v) and v >= 0, "an integer >= 0", int)


def check_voxel_size(voxel_size, name="voxel_size"):
    """Return a ZYX voxel size as a tuple of three positive floats.

    Parameters
    ----------
    voxel_size : sequence of 3 float or None
        Physical size of a voxel along (z, y, x).  ``None`` means isotropic
        unit voxels.
    name : str, optional
        Argument name used in error messages.

    Returns
    -------
    tuple of float
        ``(z, y, x)``; ``(1.0, 1.0, 1.0)`` for ``None``.

    Raises
    ------
    ValueError
        If ``voxel_size`` does not hold exactly three finite values > 0.

    Examples
    --------
    >>> check_voxel_size((4, 1, 1))
    (4.0, 1.0, 1.0)
    """
    if voxel_size is None:
        return (1.0, 1.0, 1.0)
    try:
        values = tuple(voxel_size)
    except TypeError:
        raise ValueError(
            f"{name} must be a sequence of three positive numbers (z, y, x); "
            f"got {voxel_size!r}"
        ) from None
    if len(values) != 3 or not all(
        _is_real(v) and math.isfinite(float(v)) and float(v) > 0 for v in values
    ):
        raise ValueError(
            f"{name} must be a sequence of three positive numbers (z, y, x); "
            f"got {voxel_size!r}"
        )
    return tuple(float(v) for v in values)


def check_same_shape(a, b, name_a, name_b):
    """Raise unless arrays ``a`` and ``b`` have identical shapes.

    Parameters
    ----------
    a, b : ndarray
        Arrays to compare.
    name_a, name_b : str
        Argument names used in the error message.

    Returns
    -------
    None

    Raises
    ------
    ValueError
        If the shapes differ.

    Examples
    --------
    >>> check_same_shape(np.zeros(2), np.ones(2), "a", "b")
    """
    if a.shape != b.shape:
        raise ValueError(
            f"{name_a} and {name_b} must have the same shape; "
            f"got {a.shape} and {b.shape}"
        )
