"""Reading the volumes sources name: open by format, cut a bounding box, refuse bad voxels.

A source URI (its syntax: :mod:`~neuropipe.io.uri`) names an array where the data already
lies.  This module hands it to the module of its format, and does what is the same for every
format: turning a bounding box into slices, and checking what is read.

================  ================================  ==============================================
format            read by                           how
================  ================================  ==============================================
``npy``           :mod:`~neuropipe.io.files`        memory-mapped; a box reads only its part
``npz``, ``tif``  :mod:`~neuropipe.io.files`        read whole
``zarr``          :mod:`~neuropipe.io.zarr_arrays`  zarr v2 or v3 array, or an OME-Zarr level
``hdf5``          :mod:`~neuropipe.io.hdf5`         an HDF5 dataset
``precomputed``   :mod:`~neuropipe.io.precomputed`  a Neuroglancer precomputed scale (XYZ on disk)
``bossdb``        :mod:`~neuropipe.io.boss`         a BossDB channel through intern
================  ================================  ==============================================

Every source is presented in ZYX order whatever its order on disk, a 2D image as one plane.
Chunked sources (zarr, HDF5, precomputed) read only the chunks the bounding box touches, and
report their voxel size where their metadata has one (:func:`voxel_size`).  Bounding boxes
are in the source's voxel coordinates (a precomputed layer's start at its ``voxel_offset``).
"""

from __future__ import annotations

import numpy as np

from neuropipe.errors import BadInputError, TransientError
from neuropipe.io.bbox import check_inside, parse_bbox
from neuropipe.io.boss import open_boss
from neuropipe.io.files import open_file
from neuropipe.io.hdf5 import open_hdf5
from neuropipe.io.precomputed import open_precomputed
from neuropipe.io.uri import parse_source
from neuropipe.io.volume import OpenVolume
from neuropipe.io.zarr_arrays import open_zarr

_OPENERS = {"npy": open_file, "npz": open_file, "tif": open_file, "zarr": open_zarr, "hdf5": open_hdf5,
            "precomputed": open_precomputed, "bossdb": open_boss}


def open_source(uri: str) -> OpenVolume:
    """Open the volume a source names: shape, dtype, voxel size, and a box reader.

    Parameters
    ----------
    uri : str
        A source URI (see :func:`neuropipe.io.uri.parse_source`).

    Returns
    -------
    OpenVolume

    Raises
    ------
    BadInputError
        If the data is missing, unreadable, not a numeric 2D/3D image, or the level, array
        or dataset named does not exist.
    TransientError
        If the source's server cannot be reached or fails (see :mod:`.boss`).
    """
    source = parse_source(uri)
    try:
        return _OPENERS[source.format](source)
    except (BadInputError, TransientError):
        raise
    except Exception as error:
        raise BadInputError(f"source {uri!r}: cannot read {source.path} as {source.format}: "
                            f"{error.__class__.__name__}: {error}") from error


def voxel_size(uri: str) -> tuple[float, float, float] | None:
    """Return the ZYX voxel size in nm from the source's metadata, or None where it has none."""
    return open_source(uri).voxel_size_nm


def volume_shape(uri: str) -> tuple[int, int, int]:
    """Return the ZYX shape of the volume a source names, reading as little as possible."""
    return tuple(open_source(uri).shape)


def read_volume(uri: str, bbox: str | None = None) -> np.ndarray:
    """Read a volume, or the part inside ``bbox``, as a ZYX array.

    Parameters
    ----------
    uri : str
        A source URI (see :func:`neuropipe.io.uri.parse_source`).
    bbox : str, optional
        ``"z0:z1,y0:y1,x0:x1"`` in the source's voxel coordinates; default: the whole volume.

    Returns
    -------
    ndarray of shape (Z, Y, X)

    Raises
    ------
    BadInputError
        If the source is missing or unreadable, the array is not 2D/3D numeric, the box is
        malformed or outside the volume, the volume is empty, or it holds NaN/inf values.
    """
    volume = open_source(uri)
    return read_part(volume, box_slices(volume, bbox), bbox or "the volume")


def box_slices(volume: OpenVolume, bbox: str | None) -> tuple[slice, slice, slice]:
    """Return the slices (relative to the volume's origin) of ``bbox``, the whole volume for None.

    Raises
    ------
    BadInputError
        If the box is malformed or reaches outside the volume, or the volume is empty.
    """
    if bbox:
        return check_inside(parse_bbox(bbox), volume.shape, what=f"volume {volume.uri}", origin=volume.origin)
    if 0 in tuple(volume.shape):
        raise BadInputError(f"source {volume.uri!r} holds an empty volume of shape {tuple(volume.shape)}.")
    return tuple(slice(0, size) for size in volume.shape)


def read_part(volume: OpenVolume, slices, what: str = "a box") -> np.ndarray:
    """Read the ZYX ``slices`` of an opened volume, refusing NaN and infinite voxels.

    Raises
    ------
    BadInputError
        If reading fails for a reason another try would not change, or voxels are not finite.
    TransientError
        If the source's server failed in a way another try may not (see :mod:`.boss`).
    """
    try:
        array = np.ascontiguousarray(volume.read(slices))
    except (BadInputError, TransientError):
        raise
    except Exception as error:
        raise BadInputError(f"source {volume.uri!r}: reading {what} failed: "
                            f"{error.__class__.__name__}: {error}") from error
    if array.size == 0:
        raise BadInputError(f"source {volume.uri!r} holds an empty volume of shape {array.shape}.")
    if array.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            raise BadInputError(f"source {volume.uri!r}: {bad} of {array.size} voxels are NaN or infinite "
                                f"(reading {what}).")
    return array
