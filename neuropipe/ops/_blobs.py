"""Multi-scale blob detection of touching cells (the ``"blobs"`` method of ``detect_cells``).

Greedy sphere matching assumes every cell has the template's size: it splits large cells
in two and merges small touching ones.  Scale-space blob detection (Lindeberg, IJCV 1998;
for touching nuclei, Al-Kofahi et al., IEEE TBME 2010) looks for the centre of each blob at
its own scale instead: the scale-normalised Laplacian of Gaussian ``-s**2 * LoG_s`` of a
ball of radius ``r`` peaks at its centre at ``s = r / sqrt(3)``, and two touching balls keep
two peaks as long as their centres are more than about one radius apart.  So: take that
response at a few scales spanning the expected sizes, keep its per-voxel maximum, and call
every clear local maximum inside the mask (below) a cell.  The probability is
mirrored at the volume border, so a cell cut by the border still peaks near its centre.
The mask is the probability smoothed by one voxel, thresholded, with enclosed holes
filled, so the dark patches of chromatin and photon noise do not cut cells apart.  Each
voxel of the mask then goes to the cell whose peak is nearest relative to the cell's scale
(touching cells meet where their balls would, a large cell does not swallow a small one),
and each cell is placed at the centroid of its voxels: the part of it in view, where an
annotator marks a cell cut by the border, and the middle of an elongated cell whose peak
lies off-centre.  An elongated cell often holds two peaks, so two touching cells whose
centroids are closer than ``MERGE`` of the expected diameter are then made one (each cell
merges at most once, the closest pairs first).

The ``"learned"`` method shares out its mask the same way; its seeds are the peaks of the
centre map a nuclei network predicts (:mod:`neuropipe.ops.nuclei`).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from .components import label_components

#: Radii of the scales searched, as fractions of the expected radius ``sphere_size / 2``.
SCALE_RANGE = (0.7, 1.6)
SCALES = 5
#: Two detections closer than this fraction of the expected radius are one cell.
SEPARATION = 0.5
#: The response at the centre of a ball of probability 1 in probability 0, at its own scale
#: (0.89 to 0.92 measured for radii 2.5 to 8 voxels).
BALL_RESPONSE = 0.925
#: Weakest blob kept, as a fraction of ``BALL_RESPONSE``: nuclei in GMM maps of synthetic
#: volumes peak at 0.33 or more, the ripples of a map of pure noise below 0.04.
MIN_CONTRAST = 0.1
#: Touching cells whose centroids are closer than this fraction of the expected diameter are one
#: cell (0 merges none).  0.8 had the best mean F1 over the eight regimes of
#: ``bench/bench_detection.py --seeds 0 1 2 3``, parameters chosen per regime on the other seeds
#: (0.946 against 0.936 without merging; 0.6 0.944, 1.0 0.925).
MERGE = 0.8
#: Gaussian smoothing of the probability before it is thresholded into the mask, in voxels
#: of the finest axis.
MASK_SMOOTHING = 1.0


def ellipsoid(radius, spacing):
    """Boolean ball of physical ``radius`` on a grid of ``spacing`` (ZYX), at least one voxel."""
    half = [max(0, int(np.floor(radius / step))) for step in spacing]
    grid = np.ogrid[tuple(slice(-h, h + 1) for h in half)]
    return sum((axis * step) ** 2 for axis, step in zip(grid, spacing)) <= radius**2 + 1e-9


def blob_response(prob, radii, spacing):
    """Maximum over ``radii`` of the scale-normalised ``-s**2 * LoG_s(prob)``, ``s = r / sqrt(3)``.

    ``spacing`` is the voxel size relative to the finest axis; ``radii`` are in voxels of
    the finest axis, so blobs are round in physical space.  Returns the response and, per
    voxel, the radius that gave it.
    """
    prob = np.asarray(prob, np.float32)
    best = np.full(prob.shape, -np.inf, np.float32)
    size = np.zeros(prob.shape, np.float32)
    for radius in radii:
        scale = radius / np.sqrt(3.0)
        smooth = ndimage.gaussian_filter(prob, scale / spacing, mode="reflect")
        # Laplacian of the smoothed map by central differences: a third of the passes of
        # ndimage.gaussian_laplace, and as exact at these scales (two voxels or more).
        laplacian = sum(ndimage.correlate1d(smooth, [1.0, -2.0, 1.0], axis=axis, mode="reflect") / step**2
                        for axis, step in enumerate(spacing))
        response = -(scale**2) * laplacian
        better = response > best
        best[better] = response[better]
        size[better] = radius
    return best, size


def blob_seeds(prob, mask, radius, spacing, max_cells):
    """Return the blob peaks of ``prob`` inside ``mask``, strongest first, and the radius of each.

    Scales from ``SCALE_RANGE[0]`` to ``SCALE_RANGE[1]`` times ``radius`` (the expected cell
    radius in voxels of the finest axis) are searched; peaks weaker than ``MIN_CONTRAST`` of
    a ball's response, or nearer than ``SEPARATION * radius`` to a stronger one, are not
    seeds.  At most ``max_cells`` are returned.
    """
    response, size = blob_response(prob, np.geomspace(*SCALE_RANGE, SCALES) * radius, spacing)
    footprint = ellipsoid(SEPARATION * radius, spacing)
    strong = response >= MIN_CONTRAST * BALL_RESPONSE
    peaks = mask & strong & (response == ndimage.maximum_filter(response, footprint=footprint))
    seeds = _separated(label_components(peaks, connectivity=26).centroids, response, spacing,
                       SEPARATION * radius)[:max_cells]
    return seeds, size[tuple(np.round(seeds).astype(int).T)]


def detect_blobs(prob, threshold, sphere_size, max_cells, min_voxels, voxel_size):
    """Return (labels, centroids, scores, counts) of the blobs of ``prob``, or None if there are none.

    ``sphere_size`` is the expected cell diameter in voxels of the finest axis (see
    :func:`blob_seeds`).  At most ``max_cells`` of the strongest blobs are kept; blobs owning
    fewer than ``min_voxels`` voxels of the mask are dropped as specks.
    """
    spacing = np.asarray(voxel_size, float) / min(voxel_size)
    mask = ndimage.gaussian_filter(np.asarray(prob, np.float32), MASK_SMOOTHING / spacing) > threshold
    mask = ndimage.binary_fill_holes(mask)
    if not mask.any():
        return None
    seeds, sizes = blob_seeds(prob, mask, sphere_size / 2, spacing, max_cells)
    if not len(seeds):
        return None
    cells = cells_from_seeds(mask, seeds, sizes, spacing, prob, min_voxels)
    if cells is None or not MERGE:
        return cells
    labels = merge_close_cells(cells[0], cells[1], spacing, MERGE * sphere_size)
    return _describe(labels, prob)


def cells_from_seeds(mask, seeds, sizes, spacing, prob, min_voxels):
    """Return (labels, centroids, scores, counts) of the cells grown from ``seeds`` in ``mask``, or None.

    Each voxel of ``mask`` goes to the seed nearest relative to its size (``sizes``, in voxels
    of the finest axis); cells owning fewer than ``min_voxels`` voxels are dropped.  The
    centroid is that of the cell's voxels, the score its mean ``prob``.
    """
    labels = _assign(mask, seeds, sizes, spacing)
    counts = np.bincount(labels.ravel(), minlength=len(seeds) + 1)[1:]
    keep = counts >= max(min_voxels, 1)
    if not keep.any():
        return None
    lut = np.zeros(len(seeds) + 1, np.uint32)
    lut[1:][keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.uint32)
    return _describe(lut[labels], prob)


def merge_close_cells(labels, centroids, spacing, distance):
    """Return ``labels`` with touching cells whose centroids lie closer than ``distance`` made one.

    ``distance`` is in voxels of the finest axis (``spacing`` relative to it).  Cells touch
    where their voxels are face neighbours.  The closest pairs merge first and each cell
    merges at most once; ids are renumbered 1..M in the order of the lower id of each pair.
    """
    pairs = set()
    for axis in range(labels.ndim):
        here = np.moveaxis(labels, axis, 0)
        low, high = here[:-1].ravel(), here[1:].ravel()
        touching = (low > 0) & (high > 0) & (low != high)
        pairs.update(zip(np.minimum(low[touching], high[touching]).tolist(),
                         np.maximum(low[touching], high[touching]).tolist()))
    close = sorted((float(np.linalg.norm((centroids[a - 1] - centroids[b - 1]) * spacing)), a, b) for a, b in pairs)
    lut = np.arange(len(centroids) + 1, dtype=np.uint32)
    merged = set()
    for gap, a, b in close:
        if gap >= distance:
            break
        if a not in merged and b not in merged:
            merged.update((a, b))
            lut[b] = a
    if not merged:
        return labels
    kept = np.unique(lut)
    renumber = np.zeros(len(lut), np.uint32)
    renumber[kept] = np.arange(len(kept), dtype=np.uint32)
    return renumber[lut][labels]


def _describe(labels, prob):
    """Return (labels, centroids, scores, counts) of cells 1..N of ``labels``: centroid, mean ``prob``, size."""
    counts = np.bincount(labels.ravel(), minlength=int(labels.max()) + 1)[1:].astype(np.int64)
    ids = np.arange(1, len(counts) + 1)
    centroids = np.asarray(ndimage.center_of_mass(np.ones(labels.shape), labels, ids), float).reshape(-1, 3)
    sums = np.bincount(labels.ravel(), weights=prob.ravel(), minlength=len(ids) + 1)[1:]
    return labels, centroids, sums / counts, counts


def detect_centres(foreground, centres, threshold, stop, sphere_size, max_cells, min_voxels, voxel_size):
    """Return (labels, centroids, scores, counts) of the cells a nuclei network sees, or None.

    Every local maximum of the predicted ``centres`` map (see
    :func:`neuropipe.ops.nuclei.centre_map`) of at least ``stop`` inside the foreground
    (``foreground > threshold``, enclosed holes filled) and at least ``SEPARATION`` of the
    expected radius ``sphere_size / 2`` from a stronger one is a cell; at most ``max_cells``
    of the strongest are kept, and the foreground is shared out among them as for blobs.
    """
    spacing = np.asarray(voxel_size, float) / min(voxel_size)
    mask = ndimage.binary_fill_holes(foreground > threshold)
    if not mask.any():
        return None
    radius = sphere_size / 2
    centres = np.asarray(centres, np.float32)
    footprint = ellipsoid(SEPARATION * radius, spacing)
    peaks = mask & (centres >= stop) & (centres == ndimage.maximum_filter(centres, footprint=footprint))
    seeds = _separated(label_components(peaks, connectivity=26).centroids, centres, spacing,
                       SEPARATION * radius)[:max_cells]
    if not len(seeds):
        return None
    return cells_from_seeds(mask, seeds, np.full(len(seeds), radius), spacing, foreground, min_voxels)


def _separated(candidates, response, spacing, distance):
    """Candidates, strongest first, that lie at least ``distance`` from every stronger kept one."""
    if not len(candidates):
        return candidates
    strength = response[tuple(np.round(candidates).astype(int).T)]
    ordered = candidates[np.argsort(-strength, kind="stable")]
    tree = cKDTree(ordered * spacing)
    kept = np.ones(len(ordered), bool)
    for index in range(len(ordered)):
        if kept[index]:
            for other in tree.query_ball_point(ordered[index] * spacing, distance):
                if other > index:
                    kept[other] = False
    return ordered[kept]


def _assign(mask, seeds, sizes, spacing, neighbours=6):
    """Give every voxel of ``mask`` the id (1..N) of the seed nearest relative to its size.

    A voxel goes to the seed with the smallest ``distance / radius`` (physical units), so
    touching cells of different sizes meet where their balls would: a large cell does not
    swallow a small neighbour.  Voxels more than two radii from every seed stay 0.
    """
    points = np.argwhere(mask)
    scaled = points * spacing
    k = min(neighbours, len(seeds))
    distance, nearest = cKDTree(seeds * spacing).query(scaled, k=k, workers=-1)
    distance, nearest = distance.reshape(len(points), k), nearest.reshape(len(points), k)
    relative = distance / sizes[nearest]
    choice = np.argmin(relative, axis=1)
    rows = np.arange(len(points))
    owner = np.where(relative[rows, choice] <= 2.0, nearest[rows, choice] + 1, 0)
    labels = np.zeros(mask.shape, np.uint32)
    labels[tuple(points.T)] = owner
    return labels
