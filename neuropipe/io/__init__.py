"""Reading volumes from the sources a Dataset names: files, zarr, HDF5, precomputed layers."""

from neuropipe.io.bbox import format_bbox, parse_bbox
from neuropipe.io.sources import SUPPORTED_SUFFIXES, open_source, parse_source, read_volume, volume_shape, voxel_size

__all__ = ["SUPPORTED_SUFFIXES", "format_bbox", "open_source", "parse_bbox", "parse_source", "read_volume",
           "volume_shape", "voxel_size"]
