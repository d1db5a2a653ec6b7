"""What every source format opens to: a ZYX volume that reads boxes on demand.

Each format module (:mod:`~neuropipe.io.files`, :mod:`~neuropipe.io.zarr_arrays`,
:mod:`~neuropipe.io.hdf5`, :mod:`~neuropipe.io.precomputed`, :mod:`~neuropipe.io.boss`) turns a
parsed source into an :class:`OpenVolume`; :mod:`~neuropipe.io.sources` cuts the bounding box
from it.  Chunked formats read only the chunks a box touches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from neuropipe.errors import BadInputError

Slices = tuple[slice, slice, slice]

_UNITS_NM = {"nanometer": 1.0, "nm": 1.0, "micrometer": 1e3, "um": 1e3, "µm": 1e3, "millimeter": 1e6, "mm": 1e6,
             "angstrom": 0.1, "meter": 1e9, "m": 1e9}


@dataclass(frozen=True)
class OpenVolume:
    """An opened source, presented in ZYX whatever its order on disk.

    Attributes
    ----------
    uri : str
        The source URI (for messages).
    shape : tuple of int
        Extent in voxels, ZYX.
    dtype : numpy.dtype
    read : callable
        ``read(slices)`` returns the ZYX array inside three slices relative to ``origin``.
    origin : tuple of int
        Voxel coordinates of the first voxel, ZYX (nonzero for precomputed layers with a
        ``voxel_offset``): bounding boxes are given in these coordinates.
    voxel_size_nm : tuple of float or None
        ZYX voxel size from the source's metadata, where it has one.
    """

    uri: str
    shape: tuple
    dtype: np.dtype
    read: Callable[[Slices], np.ndarray]
    origin: tuple = (0, 0, 0)
    voxel_size_nm: tuple | None = None


def read_from_array(array) -> Callable[[Slices], np.ndarray]:
    """Return a reader over an in-memory or lazily sliced ZYX array (numpy, zarr, h5py)."""
    return lambda slices: np.asarray(array[slices])


def as_zyx(array, uri: str, axes: list[str] | None = None):
    """Check an array is a numeric 2D/3D image and present it as ZYX (a 2D image as one plane).

    Parameters
    ----------
    array : array-like
        Anything with ``shape``, ``dtype`` and numpy-style slicing; it is sliced lazily.
    uri : str
        For messages.
    axes : list of str, optional
        Axis names from the source's metadata (e.g. OME-Zarr ``['c', 'z', 'y', 'x']``); axes
        other than z, y and x must have size 1 and are dropped.  Default: ``y, x`` for 2D,
        ``z, y, x`` for 3D arrays.
    """
    if np.dtype(array.dtype).kind not in "biuf":
        raise BadInputError(f"source {uri!r}: dtype {array.dtype} is not a numeric image type.")
    shape = tuple(array.shape)
    if axes is None:
        if len(shape) not in (2, 3):
            raise BadInputError(f"source {uri!r}: expected a 2D or 3D (ZYX) array, got shape {shape}.")
        axes = ["z", "y", "x"][-len(shape):]
    extra = [(name, size) for name, size in zip(axes, shape) if name not in ("z", "y", "x")]
    if any(size != 1 for _, size in extra) or not {"y", "x"} <= set(axes):
        raise BadInputError(f"source {uri!r}: axes {axes} of shape {shape}: need y and x, and any axis besides "
                            f"z, y and x of size 1 (found {extra}).")
    return array if list(axes) == ["z", "y", "x"] else _ZYXView(array, list(axes))


def to_nm(values, unit: str | None, uri: str) -> tuple | None:
    """Convert a voxel size in ``unit`` (OME-Zarr and precomputed names) to nanometres."""
    if values is None:
        return None
    factor = _UNITS_NM.get((unit or "nanometer").lower())
    if factor is None:
        raise BadInputError(f"source {uri!r}: unknown length unit {unit!r} in its metadata.")
    return tuple(float(value) * factor for value in values)


class _ZYXView:
    """A ZYX view of an array with single-valued extra axes or no z axis, still sliced lazily."""

    def __init__(self, array, axes: list[str]):
        self._array, self._axes = array, axes
        sizes = dict(zip(axes, array.shape))
        self.shape = (sizes.get("z", 1), sizes["y"], sizes["x"])
        self.dtype = array.dtype
        self.ndim = 3

    def __getitem__(self, slices: Slices) -> np.ndarray:
        wanted = dict(zip("zyx", slices))
        part = np.asarray(self._array[tuple(wanted[name] if name in wanted else 0 for name in self._axes)])
        return part if "z" in self._axes else part[np.newaxis][slices[0]]
