"""Zarr arrays (format 2 and 3, OME-Zarr): read one box at a time, and written as export targets.

The library is **zarr** (zarr-python 3), the reference implementation: it reads both zarr
format 2 and 3, groups and their attributes, so OME-Zarr multiscale metadata comes for free.
It is imported inside the functions that need it, so importing neuropipe stays quick.

A source is the store itself, an array inside a group (``#path``) or a level of an OME-Zarr
multiscale group (``?resolution=N``); reads touch only the chunks a box overlaps.  A target is
an array of the result's shape, created in chunks of :data:`ZARR_CHUNKS` where it is missing,
with the result's offset and voxel size recorded in ``attrs["neuropipe"]``.  The module is not
called ``zarr`` so that it is never mistaken for the library.
"""

from __future__ import annotations

import numpy as np

from neuropipe.errors import BadInputError
from neuropipe.io.contents import CREATED_DTYPES, Written, fit_dtype
from neuropipe.io.uri import Source, Target
from neuropipe.io.volume import OpenVolume, as_zyx, read_from_array, to_nm

ZARR_CHUNKS = (32, 256, 256)  # ZYX; 2 MB of uint8, 8 MB of float32 per chunk


def chunks_within(shape, chunks) -> tuple:
    """Return ``chunks`` cut down to ``shape`` where the array is smaller than a chunk.

    Parameters
    ----------
    shape : tuple of int
        The array's extent.
    chunks : tuple of int
        The chunk shape wanted, e.g. :data:`ZARR_CHUNKS`.
    """
    return tuple(min(size, chunk) for size, chunk in zip(shape, chunks))


def open_zarr(source: Source) -> OpenVolume:
    """Open a zarr array: the store itself, ``#path`` inside a group, or an OME-Zarr level.

    ``?resolution=N`` picks level N of the group's OME-Zarr ``multiscales`` (0: finest);
    the voxel size comes from that level's scale transformation.

    Raises
    ------
    BadInputError
        If the store is missing or unreadable, names a group where an array is wanted, or the
        array, group or level named does not exist.
    """
    import zarr

    if not source.path.exists():
        raise BadInputError(f"source {source.uri!r}: {source.path} does not exist.")
    try:
        node = zarr.open(store=str(source.path), mode="r")
    except Exception as error:
        raise BadInputError(f"source {source.uri!r}: {source.path} is not a readable zarr store: "
                            f"{error.__class__.__name__}: {error}") from error
    if source.inner:
        node = _zarr_child(node, source.inner, source.uri)
    multiscales = _multiscales(node)
    if multiscales is None:
        if source.resolution is not None:
            raise BadInputError(f"source {source.uri!r}: ?resolution needs an OME-Zarr multiscale group; "
                                "this is a plain zarr node.")
        if isinstance(node, zarr.Group):
            raise BadInputError(f"source {source.uri!r} is a zarr group, not an array; name one after '#' "
                                f"(it holds {', '.join(sorted(node.array_keys())) or 'no arrays'}).")
        return _open_array(node, source.uri)
    return _open_multiscale_level(node, multiscales, source)


def write_zarr(target: Target, array: np.ndarray, *, content, offset_zyx, voxel_size_nm, create) -> Written:
    """Write a zarr array (a group's by ``#path``) of the array's shape, recording offset and voxel size.

    An existing array must have the same shape; it keeps its dtype.  A created one is float32
    for probabilities and uint32 for labels, in chunks of :data:`ZARR_CHUNKS`.  See
    :func:`neuropipe.io.targets.write_volume` for the parameters.

    Raises
    ------
    BadInputError
        If the array is missing and ``create`` is not set, has another shape, or cannot hold
        the values.
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
        chunks = chunks_within(array.shape, ZARR_CHUNKS)
        stored = (group.create_array(path, shape=data.shape, chunks=chunks, dtype=data.dtype) if path else
                  zarr.open_array(store=str(target.path), mode="w", shape=data.shape, chunks=chunks, dtype=data.dtype))
    stored[...] = data
    stored.attrs.update({"neuropipe": {"content": content, "offset_zyx": [int(v) for v in offset_zyx],
                                       "voxel_size_nm": [float(v) for v in voxel_size_nm]}})
    return Written(target.uri, data.dtype.name, data.nbytes)


def _zarr_child(node, path: str, uri: str):
    """Return the array or group at ``path`` inside the group ``node``."""
    import zarr

    if isinstance(node, zarr.Array):
        raise BadInputError(f"source {uri!r}: the store is a zarr array, not a group; it holds no {path!r} "
                            "(drop the '#' part).")
    try:
        return node[path]
    except (KeyError, TypeError, FileNotFoundError) as error:
        raise BadInputError(f"source {uri!r}: no array or group {path!r} in the zarr store.") from error


def _multiscales(node):
    """Return the first OME-Zarr ``multiscales`` entry of a node (0.4 or 0.5 layout), or None."""
    attributes = dict(getattr(node, "attrs", {}))
    multiscales = attributes.get("multiscales") or attributes.get("ome", {}).get("multiscales")
    return multiscales[0] if multiscales else None


def _open_multiscale_level(group, multiscale: dict, source) -> OpenVolume:
    """Open the level ``?resolution=N`` names, with the voxel size of its scale transformation."""
    levels = multiscale["datasets"]
    level = source.resolution or 0
    if level >= len(levels):
        raise BadInputError(f"source {source.uri!r}: resolution {level} does not exist; the OME-Zarr group has "
                            f"levels 0-{len(levels) - 1}.")
    axes = [axis["name"] if isinstance(axis, dict) else axis for axis in multiscale.get("axes", ["z", "y", "x"])]
    units = {axis["name"]: axis.get("unit") for axis in multiscale.get("axes", []) if isinstance(axis, dict)}
    array = _zarr_child(group, levels[level]["path"], source.uri)
    scale = next((t["scale"] for t in levels[level].get("coordinateTransformations", []) if t["type"] == "scale"),
                 None)
    voxel = None
    if scale is not None:
        by_axis = dict(zip(axes, scale))
        voxel = tuple(to_nm([by_axis.get(name, 1.0)], units.get(name), source.uri)[0] for name in "zyx")
    return _open_array(array, source.uri, axes=axes, voxel_size_nm=voxel)


def _open_array(array, uri: str, axes=None, voxel_size_nm=None) -> OpenVolume:
    """Present a zarr array as an :class:`OpenVolume` sliced lazily in ZYX."""
    view = as_zyx(array, uri, axes)
    return OpenVolume(uri, tuple(view.shape), np.dtype(array.dtype), read_from_array(view),
                      voxel_size_nm=voxel_size_nm)
