"""HDF5 datasets (``.h5``, ``.hdf5``, ``.hdf``), read one box at a time.

The library is **h5py**, the HDF5 binding everyone uses (CREMI, ilastik and many labs ship
HDF5); it is imported inside the functions that need it, so importing neuropipe stays quick.
HDF5 is read only: results are written to zarr, precomputed or Boss targets.  The file is
opened again for every box, so an opened volume holds no file handle between reads.
"""

from __future__ import annotations

import numpy as np

from neuropipe.errors import BadInputError
from neuropipe.io.uri import Source
from neuropipe.io.volume import OpenVolume, as_zyx, to_nm


def open_hdf5(source: Source) -> OpenVolume:
    """Open a dataset of an HDF5 file, named after ``#`` (optional when the file holds one).

    The voxel size comes from the dataset's ``resolution`` attribute (nm, ZYX, as CREMI
    writes it) or ``element_size_um`` (µm, ZYX, as ilastik and Fiji write it), where it
    gives all three axes.

    Raises
    ------
    BadInputError
        If the file is missing or not HDF5, asks for a resolution level, or the dataset named
        (or the only one) does not exist.
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
    """Return the paths of every dataset in an open HDF5 file."""
    import h5py

    names = []
    handle.visititems(lambda name, item: names.append(name) if isinstance(item, h5py.Dataset) else None)
    return names


def _only_dataset(handle, uri: str) -> str:
    """Return the path of the file's one dataset, or raise where it holds none or several."""
    names = _datasets(handle)
    if len(names) != 1:
        raise BadInputError(f"source {uri!r}: the file holds {len(names)} datasets ({', '.join(names) or 'none'}); "
                            "name one after '#', e.g. sample.h5#volumes/raw.")
    return names[0]
