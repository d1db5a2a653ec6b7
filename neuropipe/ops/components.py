"""Connected-component labelling with per-object statistics (via cc3d)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cc3d
import numpy as np

from ._validate import as_volume, check_nonnegative_int

__all__ = ["Components", "label_components"]

logger = logging.getLogger(__name__)

_CONNECTIVITIES = (6, 18, 26)
THICK_SECTION_RATIO = 2.0


def thick_sections(voxel_size) -> bool:
    """Return True when planes are ``THICK_SECTION_RATIO`` times farther apart than pixels.

    Examples
    --------
    >>> thick_sections((50, 4, 4)), thick_sections((1, 1, 1)), thick_sections(None)
    (True, False, False)
    """
    if voxel_size is None:
        return False
    z, y, x = (float(value) for value in voxel_size)
    return z >= THICK_SECTION_RATIO * min(y, x)


def _label_planes(vol, *, connectivity, dust):
    """Label each z plane in 2D, numbering the objects of all planes consecutively."""
    labels = np.zeros(vol.shape, np.uint32)
    offset = 0
    for z, plane in enumerate(vol):
        if dust > 0:
            plane = cc3d.dust(plane, threshold=dust, connectivity=connectivity)
        found = cc3d.connected_components(plane, connectivity=connectivity, out_dtype=np.uint32)
        count = int(found.max())
        labels[z] = np.where(found > 0, found + offset, 0)
        offset += count
    return labels


@dataclass(frozen=True)
class Components:
    """Connected components of a volume and their statistics.

    Attributes
    ----------
    labels : ndarray of shape (Z, Y, X), uint32
        Component ids 1..N (contiguous); 0 is background.
    voxel_counts : ndarray of shape (N,), int64
        Voxels of component ``i + 1``.
    centroids : ndarray of shape (N, 3), float64
        ZYX voxel-coordinate centroid of component ``i + 1``.
    bounding_boxes : ndarray of shape (N, 6), int64
        ``(z0, z1, y0, y1, x0, x1)`` half-open bounding box of component
        ``i + 1``, usable as ``labels[z0:z1, y0:y1, x0:x1]``.
    """

    labels: np.ndarray
    voxel_counts: np.ndarray
    centroids: np.ndarray
    bounding_boxes: np.ndarray

    @property
    def count(self):
        """Number of components N (int)."""
        return int(self.voxel_counts.shape[0])


def label_components(volume, *, connectivity=26, dust=0, voxel_size=None):
    """Label connected components and measure them.

    A boolean volume is treated as a binary mask (foreground = True).  An
    integer volume is treated as a label volume: voxels with the same
    non-zero value that touch form a component, so two touching objects with
    different values stay separate, and one value split in two pieces gives
    two components.  Components with fewer than ``dust`` voxels are removed
    and the remaining ones renumbered 1..N in scan (C) order of their first
    voxel.

    Serial-section volumes whose planes lie at least ``THICK_SECTION_RATIO``
    times farther apart than their pixels (ISBI 2012: 50 nm vs 4 nm) are
    labelled plane by plane, as the ISBI 2012 challenge scores them: across
    thick sections neighbouring objects overlap and would merge.

    Parameters
    ----------
    volume : array_like of shape (Z, Y, X), bool or integer
        Mask or label volume; 0 / False is background.
    connectivity : {6, 18, 26}, optional
        Neighbourhood: faces (6), faces and edges (18), or also corners (26).
    dust : int, optional
        Remove components with fewer than this many voxels (0 keeps all).
    voxel_size : sequence of 3 floats, optional
        ZYX voxel size; decides plane-by-plane labelling (see above).
        Default None: isotropic.

    Returns
    -------
    Components
        Labels (uint32) and per-component statistics; an all-zero volume
        gives zero components.

    Raises
    ------
    ValueError
        If ``volume`` is not a non-empty 3-D bool/integer array, or
        ``connectivity`` / ``dust`` are invalid.

    Examples
    --------
    >>> v = np.zeros((1, 3, 5), bool); v[0, :, 0] = True; v[0, 1, 3:] = True
    >>> c = label_components(v)
    >>> c.voxel_counts.tolist(), c.bounding_boxes[1].tolist()
    ([3, 2], [0, 1, 1, 2, 3, 5])
    """
    vol = as_volume(volume, "volume")
    if not (vol.dtype == np.bool_ or np.issubdtype(vol.dtype, np.integer)):
        raise ValueError(
            f"volume must be a bool mask or an integer label volume; got dtype {vol.dtype}"
        )
    if connectivity not in _CONNECTIVITIES or isinstance(connectivity, bool):
        raise ValueError(f"connectivity must be one of {_CONNECTIVITIES}; got {connectivity!r}")
    dust = check_nonnegative_int("dust", dust)
    if vol.dtype == np.bool_:
        vol = vol.view(np.uint8)
    vol = np.ascontiguousarray(vol)

    if thick_sections(voxel_size):
        labels = _label_planes(vol, connectivity=4 if connectivity == 6 else 8, dust=dust)
    else:
        if dust > 0:
            vol = cc3d.dust(vol, threshold=dust, connectivity=connectivity)
        labels = cc3d.connected_components(vol, connectivity=connectivity, out_dtype=np.uint32)
    n = int(labels.max())
    if n == 0:
        return Components(
            labels=labels.astype(np.uint32, copy=False),
            voxel_counts=np.zeros(0, np.int64),
            centroids=np.zeros((0, 3), np.float64),
            bounding_boxes=np.zeros((0, 6), np.int64),
        )
    stats = cc3d.statistics(labels, no_slice_conversion=True)
    counts = np.asarray(stats["voxel_counts"][1:n + 1], np.int64)
    centroids = np.asarray(stats["centroids"][1:n + 1], np.float64)
    boxes = np.asarray(stats["bounding_boxes"][1:n + 1], np.int64).copy()
    boxes[:, 1::2] += 1  # cc3d gives inclusive maxima; make them half-open
    logger.debug("label_components: %d components (connectivity=%d, dust=%d)", n, connectivity, dust)
    return Components(labels=labels, voxel_counts=counts, centroids=centroids, bounding_boxes=boxes)
