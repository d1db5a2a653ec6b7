"""Seeded distance-transform detection of touching cells (the ``"distance"`` method).

Greedy sphere matching splits large cells and merges small touching ones; the classic
remedy for touching nuclei (e.g. Malpica et al., Cytometry 1997) looks at the shape of the
foreground instead of its brightness: inside a cell the Euclidean distance to the background
peaks once, near the centre, and two touching cells meet at a neck of lower distance.  So:
threshold the probability, take the anisotropic distance transform, smooth it, keep its
local maxima at least a cell radius apart as seeds, and grow one region per seed by a
watershed of the distance.  Cells cut by the volume border keep their peak because the mask
is mirrored beyond the border before the distance transform.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from .components import label_components


def ellipsoid(radius: float, spacing) -> np.ndarray:
    """Boolean ball of physical ``radius`` on a grid of ``spacing`` (ZYX), at least one voxel."""
    half = [max(0, int(np.floor(radius / step))) for step in spacing]
    grid = np.ogrid[tuple(slice(-h, h + 1) for h in half)]
    return sum((axis * step) ** 2 for axis, step in zip(grid, spacing)) <= radius**2 + 1e-9


def detect_by_distance(prob, threshold, sphere_size, max_cells, min_voxels, voxel_size):
    """Return (labels, centroids, scores, counts) of cells found by seeded distance watershed.

    ``sphere_size`` is the expected cell diameter in voxels of the finest axis: seeds closer
    than half of it are merged, and peaks whose distance to the background is below a
    quarter of it are ignored as noise.
    """
    spacing = np.asarray(voxel_size, float) / min(voxel_size)
    radius = sphere_size / 2
    mask = prob > threshold
    if not mask.any():
        return None
    pad = [(int(np.ceil(radius / step)),) * 2 for step in spacing]
    mirrored = np.pad(mask, pad, mode="symmetric")
    inner = tuple(slice(before, before + size) for (before, _), size in zip(pad, mask.shape))
    distance = ndimage.distance_transform_edt(mirrored, sampling=spacing)
    smooth = ndimage.gaussian_filter(distance, sigma=np.maximum(radius / 4 / spacing, 0.5))[inner]
    distance = distance[inner]
    peaks = mask & (distance >= radius / 2) & (smooth == ndimage.maximum_filter(smooth, footprint=ellipsoid(
        radius / 2, spacing)))
    seeds = _separated(label_components(peaks, connectivity=26).centroids, smooth, spacing, radius)[:max_cells]
    if not len(seeds):
        return None
    markers = np.zeros(mask.shape, np.int32)
    markers[~mask] = -1
    for index, (z, y, x) in enumerate(np.round(seeds).astype(int), start=1):
        markers[z, y, x] = index
    relief = (65535 * (1 - smooth / smooth.max())).astype(np.uint16)
    labels = ndimage.watershed_ift(relief, markers)
    labels = np.where(mask & (labels > 0), labels, 0)
    regions = label_components(labels, connectivity=26, dust=min_voxels)
    if not regions.count:
        return None
    sums = np.bincount(regions.labels.ravel(), weights=prob.ravel(), minlength=regions.count + 1)[1:]
    return regions.labels, regions.centroids, sums / regions.voxel_counts, regions.voxel_counts


def _separated(candidates, smooth, spacing, radius):
    """Keep candidate seeds, strongest first, that lie at least ``radius`` from a stronger one."""
    if not len(candidates):
        return candidates
    strength = smooth[tuple(np.round(candidates).astype(int).T)]
    ordered = candidates[np.argsort(-strength, kind="stable")]
    tree = cKDTree(ordered * spacing)
    kept = np.ones(len(ordered), bool)
    for index in range(len(ordered)):
        if kept[index]:
            for other in tree.query_ball_point(ordered[index] * spacing, radius):
                if other > index:
                    kept[other] = False
    return ordered[kept]
