"""Neuroglancer precomputed layers: read one box at a time, and written as export targets.

The library is **tensorstore** (Google): the one library that reads and writes precomputed
layers with sharding and every encoding from ``file://``, ``gs://`` and ``s3://`` with its own
retries, without cloud-volume's large dependency tree.  It is imported inside the functions
that need it, so importing neuropipe stays quick.

A layer lies in XYZ + channel on disk; neuropipe presents it in ZYX.  Its voxel coordinates
start at the scale's ``voxel_offset``, and so do the bounding boxes given for it.
"""

from __future__ import annotations

import numpy as np

from neuropipe.errors import BadInputError
from neuropipe.io.bbox import check_inside
from neuropipe.io.contents import CREATED_DTYPES, Written, fit_dtype
from neuropipe.io.uri import Source, Target
from neuropipe.io.volume import OpenVolume, Slices, to_nm

PRECOMPUTED_CHUNK_XYZ = (128, 128, 16)  # chunk of a layer neuropipe creates (XYZ, as in the layer's info)
_DRIVER = "neuroglancer_precomputed"


def open_precomputed(source: Source) -> OpenVolume:
    """Open a Neuroglancer precomputed layer (XYZ + channel on disk) as ZYX.

    ``?resolution=N`` picks scale N of the layer's ``info`` (0: finest).  Boxes are in the
    layer's own voxel coordinates, which start at its ``voxel_offset``.

    Raises
    ------
    BadInputError
        If the layer or scale cannot be opened, or it has more than one channel.
    """
    import tensorstore

    spec = {"driver": _DRIVER, "kvstore": source.location, "scale_index": source.resolution or 0}
    try:
        store = tensorstore.open(spec, read=True).result()
    except Exception as error:
        raise BadInputError(f"source {source.uri!r}: cannot open the precomputed layer: "
                            f"{error.__class__.__name__}: {error}") from error
    channels = store.domain.exclusive_max[3] - store.domain.inclusive_min[3]
    if channels != 1:
        raise BadInputError(f"source {source.uri!r}: the layer has {channels} channels; only 1 is supported.")
    units = store.schema.dimension_units
    voxel = tuple(float(units[axis].multiplier) for axis in (2, 1, 0)) if units and units[0] is not None else None
    if voxel is not None:
        voxel = to_nm(voxel, units[0].base_unit, source.uri)

    def read(slices):
        part = _region(store, slices).read().result()
        return np.ascontiguousarray(np.transpose(part, (2, 1, 0)))

    origin, shape = _extent(store)
    return OpenVolume(source.uri, shape, np.dtype(store.dtype.numpy_dtype), read, origin=origin,
                      voxel_size_nm=voxel)


def write_precomputed(target: Target, array: np.ndarray, *, content, offset_zyx, voxel_size_nm, create) -> Written:
    """Write into a precomputed layer's scale 0 (XYZ + channel on disk), creating it around the box.

    A created layer covers exactly the box, at ``offset_zyx``, typed ``segmentation`` for labels
    (uint32) and ``image`` for probabilities (float32), in chunks of
    :data:`PRECOMPUTED_CHUNK_XYZ`; an existing one must cover the box and keeps its dtype.  See
    :func:`neuropipe.io.targets.write_volume` for the parameters.

    Raises
    ------
    BadInputError
        If the layer cannot be opened and ``create`` is not set, does not cover the box, or
        cannot hold the values.
    """
    import tensorstore

    spec = {"driver": _DRIVER, "kvstore": target.location, "scale_index": 0}
    try:
        store = tensorstore.open(spec, read=True, write=True).result()
    except Exception as error:
        if not create:
            raise BadInputError(f"target {target.uri!r}: cannot open the precomputed layer (set create to make "
                                f"one): {error.__class__.__name__}: {error}") from error
        dtype = CREATED_DTYPES[content]["precomputed"]
        size = [int(v) for v in array.shape[::-1]]
        spec = {"driver": _DRIVER, "kvstore": target.location,
                "multiscale_metadata": {"type": "segmentation" if content == "labels" else "image",
                                        "data_type": dtype, "num_channels": 1},
                "scale_metadata": {"size": size, "voxel_offset": [int(v) for v in offset_zyx[::-1]],
                                   "resolution": [float(v) for v in voxel_size_nm[::-1]], "encoding": "raw",
                                   "chunk_size": [min(a, b) for a, b in zip(size, PRECOMPUTED_CHUNK_XYZ)]}}
        store = tensorstore.open(spec, create=True).result()
    origin, shape = _extent(store)
    box = tuple((int(first), int(first) + size) for first, size in zip(offset_zyx, array.shape))
    slices = check_inside(box, shape, what=f"target layer {target.uri}", origin=origin)
    data = fit_dtype(array, content, store.dtype.numpy_dtype, target.uri)
    _region(store, slices).write(np.transpose(data, (2, 1, 0))).result()
    return Written(target.uri, data.dtype.name, data.nbytes)


def _extent(store) -> tuple[tuple, tuple]:
    """Return the ZYX origin (the ``voxel_offset``) and shape of an opened scale."""
    lower, upper = store.domain.inclusive_min, store.domain.exclusive_max
    origin = tuple(int(lower[axis]) for axis in (2, 1, 0))
    shape = tuple(int(upper[axis] - lower[axis]) for axis in (2, 1, 0))
    return origin, shape


def _region(store, slices: Slices):
    """Return the part of an opened scale under ZYX ``slices`` relative to its origin: XYZ, one channel."""
    lower = store.domain.inclusive_min
    z, y, x = slices
    return store[lower[0] + x.start:lower[0] + x.stop, lower[1] + y.start:lower[1] + y.stop,
                 lower[2] + z.start:lower[2] + z.stop, lower[3]]
