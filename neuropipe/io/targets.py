"""Writing results back where the data lives: Boss channels, precomputed layers, zarr arrays.

A target is named by a URI like a source (see :mod:`.sources`):

=====================================================  ==========================================
URI                                                    written as
=====================================================  ==========================================
``bossdb://collection/experiment/channel``             a Boss channel (created where asked: uint8
                                                       image for probabilities, uint64 annotation
                                                       for labels), block by block through intern
``precomputed://file:///data/layer`` (or gs://, s3://)  a Neuroglancer precomputed layer (float32
                                                       image or uint32 segmentation when created)
``file:///data/results.zarr#path/in/group``            a zarr array (float32 or uint32 when created)
=====================================================  ==========================================

What is written is either a probability map (floats in [0, 1]) or a label volume (cell i
labelled i).  Each goes to the target's dtype when the target exists: probabilities scale to
0..255 or 0..65535 in an 8- or 16-bit channel, labels must fit the integer type; anything else
is refused with an error that names the dtypes.  The volume lands at ``offset_zyx`` in the
target's voxel coordinates (where the dataset's box began in its source), so the result lies
over the raw data in a viewer.  Writing the same box again overwrites it: an export retried
after a failure repeats its writes, it does not add to them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from neuropipe.errors import BadInputError
from neuropipe.io.bbox import check_inside
from neuropipe.io.sources import parse_source

CONTENTS = ("probability", "labels")
TARGET_FORMATS = ("bossdb", "precomputed", "zarr")
CREATED_DTYPES = {  # content -> target format -> dtype of a target that is created
    "probability": {"bossdb": "uint8", "precomputed": "float32", "zarr": "float32"},
    "labels": {"bossdb": "uint64", "precomputed": "uint32", "zarr": "uint32"},
}
ZARR_CHUNKS = (32, 256, 256)
PRECOMPUTED_CHUNK_XYZ = (128, 128, 16)


@dataclass(frozen=True)
class Written:
    """What an export wrote: where, in which dtype, how many bytes."""

    uri: str
    dtype: str
    nbytes: int


def parse_target(uri: str):
    """Parse a target URI and check it names something neuropipe can write (nothing is opened).

    Raises
    ------
    BadInputError
        For a malformed URI or a format that cannot be written (``.npy``, ``.tif``, HDF5...).
    """
    target = parse_source(uri)
    if target.format not in TARGET_FORMATS:
        raise BadInputError(f"target {uri!r}: cannot write {target.format} files; write to bossdb://, "
                            "precomputed:// or a .zarr array.")
    if target.resolution:
        raise BadInputError(f"target {uri!r}: results are written at resolution 0; drop ?resolution.")
    return target


def fit_dtype(array: np.ndarray, content: str, dtype, uri: str) -> np.ndarray:
    """Return ``array`` in ``dtype``, or raise if a target of that dtype cannot hold it.

    Probabilities (floats in [0, 1]) go to float dtypes as they are and to uint8/uint16 scaled
    to their full range; labels go to integer dtypes wide enough for the largest label.

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


def write_volume(uri: str, array: np.ndarray, *, content: str, offset_zyx=(0, 0, 0), voxel_size_nm=(1, 1, 1),
                 create: bool = True, sources=()) -> Written:
    """Write a ZYX probability map or label volume to a target.

    Parameters
    ----------
    uri : str
        See the module's table.
    array : ndarray
        ZYX; floats in [0, 1] for ``probability``, non-negative integers for ``labels``.
    content : {'probability', 'labels'}
    offset_zyx : tuple of int
        Where the array's first voxel lies in the target's voxel coordinates.
    voxel_size_nm : tuple of float
        ZYX, recorded in the metadata of a target that is created.
    create : bool
        Create the channel, layer or array where it is missing (else that is an error).
    sources : sequence of str
        Boss only: the image channels a created annotation channel is made from.

    Raises
    ------
    BadInputError
        For a target that is missing (and not to be created), refuses access, cannot hold the
        values, or does not cover the box.
    TransientError
        When the target's server keeps failing (the job is retried).
    """
    if content not in CONTENTS:
        raise ValueError(f"content must be one of {CONTENTS}, got {content!r}")
    target = parse_target(uri)
    if target.format == "bossdb":
        from neuropipe.io.boss import write_boss

        return write_boss(target, array, content=content, offset_zyx=offset_zyx, create=create, sources=sources)
    writer = write_precomputed if target.format == "precomputed" else write_zarr
    return writer(target, array, content=content, offset_zyx=offset_zyx, voxel_size_nm=voxel_size_nm, create=create)


def write_zarr(target, array, *, content, offset_zyx, voxel_size_nm, create) -> Written:
    """Write a zarr array (a group's by ``#path``) of the array's shape, recording offset and voxel size.

    An existing array must have the same shape; it keeps its dtype.
    """
    import zarr

    path = target.inner or ""
    exists = (target.path / path / ".zarray").exists() or (target.path / path / "zarr.json").exists()
    if not exists and not create:
        raise BadInputError(f"target {target.uri!r}: no zarr array there (set create to make one).")
    if exists:
        stored = zarr.open_array(store=str(target.path), path=path or None, mode="r+")
        if tuple(stored.shape) != array.shape:
            raise BadInputError(f"target {target.uri!r}: the array has shape {tuple(stored.shape)}, the result "
                                f"{array.shape}.")
        data = fit_dtype(array, content, stored.dtype, target.uri)
    else:
        data = fit_dtype(array, content, CREATED_DTYPES[content]["zarr"], target.uri)
        group = zarr.open_group(store=str(target.path), mode="a")
        chunks = tuple(min(size, chunk) for size, chunk in zip(array.shape, ZARR_CHUNKS))
        stored = (group.create_array(path, shape=data.shape, chunks=chunks, dtype=data.dtype) if path else
                  zarr.open_array(store=str(target.path), mode="w", shape=data.shape, chunks=chunks, dtype=data.dtype))
    stored[...] = data
    stored.attrs.update({"neuropipe": {"content": content, "offset_zyx": [int(v) for v in offset_zyx],
                                       "voxel_size_nm": [float(v) for v in voxel_size_nm]}})
    return Written(target.uri, data.dtype.name, data.nbytes)


def write_precomputed(target, array, *, content, offset_zyx, voxel_size_nm, create) -> Written:
    """Write into a precomputed layer's scale 0 (XYZ + channel on disk), creating it around the box.

    A created layer covers exactly the box, at ``offset_zyx``, typed ``segmentation`` for labels
    and ``image`` for probabilities; an existing one must cover the box.
    """
    import tensorstore

    spec = {"driver": "neuroglancer_precomputed", "kvstore": target.location, "scale_index": 0}
    try:
        store = tensorstore.open(spec, read=True, write=True).result()
    except Exception as error:
        if not create:
            raise BadInputError(f"target {target.uri!r}: cannot open the precomputed layer (set create to make "
                                f"one): {error.__class__.__name__}: {error}") from error
        dtype = CREATED_DTYPES[content]["precomputed"]
        size = [int(v) for v in array.shape[::-1]]
        spec = {"driver": "neuroglancer_precomputed", "kvstore": target.location,
                "multiscale_metadata": {"type": "segmentation" if content == "labels" else "image",
                                        "data_type": dtype, "num_channels": 1},
                "scale_metadata": {"size": size, "voxel_offset": [int(v) for v in offset_zyx[::-1]],
                                   "resolution": [float(v) for v in voxel_size_nm[::-1]], "encoding": "raw",
                                   "chunk_size": [min(a, b) for a, b in zip(size, PRECOMPUTED_CHUNK_XYZ)]}}
        store = tensorstore.open(spec, create=True).result()
    lower, upper = store.domain.inclusive_min, store.domain.exclusive_max
    origin = tuple(int(lower[axis]) for axis in (2, 1, 0))
    shape = tuple(int(upper[axis] - lower[axis]) for axis in (2, 1, 0))
    box = tuple((int(first), int(first) + size) for first, size in zip(offset_zyx, array.shape))
    z, y, x = check_inside(box, shape, what=f"target layer {target.uri}", origin=origin)
    data = fit_dtype(array, content, store.dtype.numpy_dtype, target.uri)
    store[lower[0] + x.start:lower[0] + x.stop, lower[1] + y.start:lower[1] + y.stop,
          lower[2] + z.start:lower[2] + z.stop, lower[3]].write(np.transpose(data, (2, 1, 0))).result()
    return Written(target.uri, data.dtype.name, data.nbytes)
