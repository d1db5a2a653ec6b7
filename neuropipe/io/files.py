"""Single-file volumes: ``.npy`` (memory-mapped), ``.npz`` and ``.tif``/``.tiff`` stacks.

``.npz`` and TIFF stacks are read whole (their formats offer no cheap partial read); use
``.npy``, zarr, HDF5 or precomputed for volumes larger than memory.  These formats are read
only: results are written to zarr, precomputed or Boss targets.
"""

from __future__ import annotations

import numpy as np

from neuropipe.errors import BadInputError
from neuropipe.io.uri import Source
from neuropipe.io.volume import OpenVolume, as_zyx, read_from_array


def open_file(source: Source) -> OpenVolume:
    """Open a ``.npy``, ``.npz`` or TIFF source.

    Raises
    ------
    BadInputError
        If the file is missing, a resolution level is asked for, or the ``.npz`` array named
        (or the only one) does not exist.
    """
    if not source.path.is_file():
        raise BadInputError(f"source {source.uri!r}: file {source.path} does not exist.")
    if source.resolution is not None:
        raise BadInputError(f"source {source.uri!r}: {source.format} files have one resolution; drop ?resolution.")
    array = as_zyx(_READERS[source.format](source), source.uri)
    return OpenVolume(source.uri, tuple(array.shape), array.dtype, read_from_array(array))


def _read_npy(source) -> np.ndarray:
    """Map the array into memory: a box later reads only its part."""
    return np.load(source.path, mmap_mode="r", allow_pickle=False)


def _read_npz(source) -> np.ndarray:
    """Read the archive's array named after ``#`` (optional when it holds one)."""
    with np.load(source.path, allow_pickle=False) as archive:
        names = list(archive.files)
        name = source.inner
        if name is None and len(names) == 1:
            name = names[0]
        if name is None:
            raise BadInputError(
                f"source {source.uri!r}: the archive holds {len(names)} arrays ({', '.join(names)}); "
                "name one after '#', e.g. file.npz#image."
            )
        if name not in names:
            raise BadInputError(f"source {source.uri!r}: no array {name!r} in the archive (it has {', '.join(names)}).")
        return archive[name]


def _read_tif(source) -> np.ndarray:
    """Read a TIFF stack whole (tifffile is imported here, on first use)."""
    import tifffile

    return tifffile.imread(source.path)


_READERS = {"npy": _read_npy, "npz": _read_npz, "tif": _read_tif}
