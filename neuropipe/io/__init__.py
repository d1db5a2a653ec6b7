"""Reading volumes from the sources a Dataset names (files, zarr, HDF5, precomputed layers, Boss).

URIs are parsed in :mod:`~neuropipe.io.uri`; each format has one module holding its reader and,
where it can be written, its writer (:mod:`~neuropipe.io.files`,
:mod:`~neuropipe.io.zarr_arrays`, :mod:`~neuropipe.io.hdf5`, :mod:`~neuropipe.io.precomputed`,
:mod:`~neuropipe.io.boss`); :mod:`~neuropipe.io.sources` and :mod:`~neuropipe.io.targets`
dispatch reads and writes to them by format; :mod:`~neuropipe.io.stored` keeps arrays in the
DataJoint store.
"""

from neuropipe.io.bbox import format_bbox, parse_bbox
from neuropipe.io.sources import open_source, read_volume, volume_shape, voxel_size
from neuropipe.io.uri import SUPPORTED_SUFFIXES, parse_source

__all__ = ["SUPPORTED_SUFFIXES", "format_bbox", "open_source", "parse_bbox", "parse_source", "read_volume",
           "volume_shape", "voxel_size"]
