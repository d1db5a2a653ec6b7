"""Reading volumes from the sources a Dataset names (``file://`` paths today)."""

from neuropipe.io.bbox import format_bbox, parse_bbox
from neuropipe.io.sources import SUPPORTED_SUFFIXES, parse_source, read_volume, volume_shape

__all__ = ["SUPPORTED_SUFFIXES", "format_bbox", "parse_bbox", "parse_source", "read_volume", "volume_shape"]
