"""Chunked volumes, read one box at a time: zarr (v2, v3, OME-Zarr), HDF5 and Neuroglancer precomputed.

Libraries, chosen for being the reference implementations their communities maintain:

- **zarr** (zarr-python 3): reads both zarr format 2 and 3, groups and their attributes, so
  OME-Zarr multiscale metadata comes for free;
- **h5py**: the HDF5 binding everyone uses (CREMI, ilastik and many labs ship HDF5);
- **tensorstore** (Google): the one library that reads precomputed layers with sharding and
  every encoding from ``file://``, ``gs://`` and ``s3://`` with its own retries, without
  cloud-volume's large dependency tree.

Each opener returns an :class:`~neuropipe.io.volume.OpenVolume` whose reads touch only the
chunks a box overlaps.
"""

from __future__ import annotations

import numpy as np

from neuropipe.errors import BadInputError
from neuropipe.io.volume import OpenVolume, as_zyx, read_from_array, to_nm


def open_zarr(source) -> OpenVolume:
    """Open a zarr array: the store itself, ``#path`` inside a group, or an OME-Zarr level.

    ``?resolution=N`` picks level N of the group's OME-Zarr ``multiscales`` (0: finest);
    the voxel size comes from that level's scale transformation.
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


def _zarr_child(node, path: str, uri: str):
    import zarr

    if isinstance(node, zarr.Array):
        raise BadInputError(f"source {uri!r}: the store is a zarr array, not a group; it holds no {path!r} "
                            "(drop the '#' part).")
    try:
        return node[path]
    except (KeyError, TypeError, FileNotFoundError) as error:
        raise BadInputError(f"source {uri!r}: no array or group {path!r} in the zarr store.") from error


def _multiscales(node):
    attributes = dict(getattr(node, "attrs", {}))
    multiscales = attributes.get("multiscales") or attributes.get("ome", {}).get("multiscales")
    return multiscales[0] if multiscales else None


def _open_multiscale_level(group, multiscale: dict, source) -> OpenVolume:
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
    view = as_zyx(array, uri, axes)
    return OpenVolume(uri, tuple(view.shape), np.dtype(array.dtype), read_from_array(view),
                      voxel_size_nm=voxel_size_nm)


def open_hdf5(source) -> OpenVolume:
    """Open a dataset of an HDF5 file, named after ``#`` (optional when the file holds one).

    The voxel size comes from the dataset's ``resolution`` attribute (nm, ZYX, as CREMI
    writes it) or ``element_size_um`` (µm, ZYX, as ilastik and Fiji write it), where it
    gives all three axes.
    """
    import h5py

    if source.resolution is not None:
        raise BadInputError(f"source {source.uri!r}: HDF5 files have no resolution levels; drop ?resolution.")
    if not source.path.is_file():
        raise BadInputError(f"source {source.uri!r}: file {source.path} does not exist.")
    try:
        with h5py.File(source.path, "r") as handle:
            name = source.inner or _only_dataset(handle, source.uri)
            if name not in handle or not isinstance(handle[name], h5py.Dataset):
                raise BadInputError(f"source {source.uri!r}: no dataset {name!r} in the file (it has "
                                    f"{', '.join(_datasets(handle)) or 'none'}).")
            dataset = handle[name]
            attributes = dict(dataset.attrs)
            view = as_zyx(dataset, source.uri)
            shape, dtype = tuple(view.shape), np.dtype(dataset.dtype)
    except BadInputError:
        raise
    except Exception as error:
        raise BadInputError(f"source {source.uri!r}: cannot read {source.path} as HDF5: "
                            f"{error.__class__.__name__}: {error}") from error
    sizes, unit = ((attributes["resolution"], "nanometer") if "resolution" in attributes
                   else (attributes.get("element_size_um"), "micrometer"))
    voxel = to_nm(list(sizes)[-3:], unit, source.uri) if sizes is not None and len(sizes) >= 3 else None

    def read(slices):
        with h5py.File(source.path, "r") as handle:
            return np.asarray(as_zyx(handle[name], source.uri)[slices])

    return OpenVolume(source.uri, shape, dtype, read, voxel_size_nm=voxel)


def _datasets(handle) -> list[str]:
    import h5py

    names = []
    handle.visititems(lambda name, item: names.append(name) if isinstance(item, h5py.Dataset) else None)
    return names


def _only_dataset(handle, uri: str) -> str:
    names = _datasets(handle)
    if len(names) != 1:
        raise BadInputError(f"source {uri!r}: the file holds {len(names)} datasets ({', '.join(names) or 'none'}); "
                            "name one after '#', e.g. sample.h5#volumes/raw.")
    return names[0]


def open_precomputed(source) -> OpenVolume:
    """Open a Neuroglancer precomputed layer (XYZ + channel on disk) as ZYX.

    ``?resolution=N`` picks scale N of the layer's ``info`` (0: finest).  Boxes are in the
    layer's own voxel coordinates, which start at its ``voxel_offset``.
    """
    import tensorstore

    spec = {"driver": "neuroglancer_precomputed", "kvstore": source.location, "scale_index": source.resolution or 0}
    try:
        store = tensorstore.open(spec, read=True).result()
    except Exception as error:
        raise BadInputError(f"source {source.uri!r}: cannot open the precomputed layer: "
                            f"{error.__class__.__name__}: {error}") from error
    lower, upper = store.domain.inclusive_min, store.domain.exclusive_max
    channels = upper[3] - lower[3]
    if channels != 1:
        raise BadInputError(f"source {source.uri!r}: the layer has {channels} channels; only 1 is supported.")
    units = store.schema.dimension_units
    voxel = tuple(float(units[axis].multiplier) for axis in (2, 1, 0)) if units and units[0] is not None else None
    if voxel is not None:
        voxel = to_nm(voxel, units[0].base_unit, source.uri)

    def read(slices):
        z, y, x = slices
        part = store[lower[0] + x.start:lower[0] + x.stop, lower[1] + y.start:lower[1] + y.stop,
                     lower[2] + z.start:lower[2] + z.stop, lower[3]].read().result()
        return np.ascontiguousarray(np.transpose(part, (2, 1, 0)))

    shape = tuple(int(upper[axis] - lower[axis]) for axis in (2, 1, 0))
    return OpenVolume(source.uri, shape, np.dtype(store.dtype.numpy_dtype), read,
                      origin=tuple(int(lower[axis]) for axis in (2, 1, 0)), voxel_size_nm=voxel)
