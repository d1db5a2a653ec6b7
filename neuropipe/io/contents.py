"""What is written to a target, and how it is fitted to the target's dtype.

Every writer (:mod:`~neuropipe.io.zarr_arrays`, :mod:`~neuropipe.io.precomputed`,
:mod:`~neuropipe.io.boss`) writes one of two contents: a probability map (floats in [0, 1])
or a label volume (cell i labelled i).  The rules that turn either into a target's dtype, and
the dtype a created target gets, are the same for every format, so they are stated once here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from neuropipe.errors import BadInputError

CONTENTS = ("probability", "labels")
CREATED_DTYPES = {  # content -> target format -> dtype of a target that is created
    "probability": {"bossdb": "uint8", "precomputed": "float32", "zarr": "float32"},
    "labels": {"bossdb": "uint64", "precomputed": "uint32", "zarr": "uint32"},
}


@dataclass(frozen=True)
class Written:
    """What an export wrote: where, in which dtype, how many bytes."""

    uri: str
    dtype: str
    nbytes: int


def fit_dtype(array: np.ndarray, content: str, dtype, uri: str) -> np.ndarray:
    """Return ``array`` in ``dtype``, or raise if a target of that dtype cannot hold it.

    Probabilities (floats in [0, 1]) go to float dtypes as they are and to uint8/uint16 scaled
    to their full range; labels go to integer dtypes wide enough for the largest label.

    Parameters
    ----------
    array : ndarray
        The probability map or label volume.
    content : {'probability', 'labels'}
    dtype : numpy dtype or str
        The target's dtype.
    uri : str
        The target (for messages).

    Returns
    -------
    ndarray
        ``array`` in ``dtype`` (not copied where it already is).

    Raises
    ------
    BadInputError
        Naming the content, the target's dtype and why it cannot hold the values.
    """
    dtype = np.dtype(dtype)
    if content == "probability":
        if dtype.kind == "f":
            return array.astype(dtype, copy=False)
        if dtype in (np.uint8, np.uint16):
            return np.rint(np.clip(array, 0, 1) * np.iinfo(dtype).max).astype(dtype)
        raise BadInputError(f"target {uri!r} holds {dtype.name}; a probability map needs a float, uint8 or uint16 "
                            "target (an annotation channel holds labels).")
    if dtype.kind not in "ui":
        raise BadInputError(f"target {uri!r} holds {dtype.name}; labels need an integer target.")
    largest = int(array.max()) if array.size else 0
    if largest > np.iinfo(dtype).max:
        raise BadInputError(f"target {uri!r} holds {dtype.name} (at most {np.iinfo(dtype).max}); the labels reach "
                            f"{largest}. Use a wider target, e.g. uint32 or a uint64 annotation channel.")
    return array.astype(dtype, copy=False)
