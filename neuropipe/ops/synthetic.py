"""Synthetic EM-like volumes with known ground truth.

The generator builds a 3-D Voronoi tessellation of "cells" whose boundaries
are drawn as dark membranes, renders an electron-microscopy-like grey-level
image from it (textured cytoplasm, dark organelle specks, blur, noise) and
returns the image together with the exact cell labels, membrane mask and cell
centroids.  It is used by the demo and by tests that need a realistic but
fully known input.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from ._validate import check_positive, check_voxel_size

__all__ = ["SyntheticSample", "make_sample"]

logger = logging.getLogger(__name__)

# Grey levels of the rendered image before blur and noise.
_CYTOPLASM = 165.0
_MEMBRANE = 70.0
_SPECK_DEPTH = 65.0
_CELL_JITTER = 12.0
_TEXTURE = 10.0
_NOISE_SD = 18.0


@dataclass(frozen=True)
class SyntheticSample:
    """A synthetic EM-like volume with its ground truth.

    Attributes
    ----------
    image : numpy.ndarray, shape (Z, Y, X), dtype uint8
        Rendered grey-level image; membranes are dark.
    cells : numpy.ndarray, shape (Z, Y, X), dtype uint32
        Instance labels 1..N of the cell interiors; 0 on membranes.
    membrane : numpy.ndarray, shape (Z, Y, X), dtype bool
        True on membrane voxels (exactly where ``cells == 0``).
    centroids : numpy.ndarray, shape (N, 3), dtype float64
        ZYX voxel-coordinate centroid of the interior of cell ``i + 1``.
    voxel_size : tuple of float
        The (z, y, x) voxel size the sample was generated with.
    """

    image: np.ndarray
    cells: np.ndarray
    membrane: np.ndarray
    centroids: np.ndarray
    voxel_size: tuple


def _sample_seeds(rng, low, high, count, min_spacing, max_candidates):
    """Dart-throw up to ``count`` points in the box [low, high) with a minimum spacing."""
    candidates = rng.uniform(low, high, size=(max_candidates, 3))
    accepted = np.empty((count, 3))
    n = 0
    limit2 = min_spacing * min_spacing
    for point in candidates:
        if n:
            d2 = np.sum((accepted[:n] - point) ** 2, axis=1)
            if d2.min() < limit2:
                continue
        accepted[n] = point
        n += 1
        if n == count:
            break
    return accepted[:n]


def _boundary_distance(points, seeds, k):
    """Nearest seed index and distance of each point to its Voronoi cell boundary.

    The distance to the boundary of the cell of nearest seed ``s1`` is the
    minimum over the other seeds ``sj`` of the distance to the bisecting
    plane, ``(|x - sj|**2 - |x - s1|**2) / (2 |sj - s1|)``; only the ``k - 1``
    next-nearest seeds are considered, which is exact in practice.
    """
    tree = cKDTree(seeds)
    dist, idx = tree.query(points, k=k)
    nearest = idx[:, 0]
    sep = np.linalg.norm(seeds[idx[:, 1:]] - seeds[nearest][:, None, :], axis=2)
    sep = np.maximum(sep, 1e-12)
    plane = (dist[:, 1:] ** 2 - dist[:, :1] ** 2) / (2.0 * sep)
    return nearest, plane.min(axis=1)


def make_sample(shape=(24, 128, 128), *, seed=0, cell_diameter=14, voxel_size=(1.0, 1.0, 1.0)):
    """Generate a synthetic EM-like volume of tessellated cells.

    Cell seeds are dart-thrown with a minimum spacing (in physical units) so
    that cells are roughly ``cell_diameter`` wide; every voxel belongs to the
    cell of its nearest seed.  Voxels within one in-plane voxel of a cell
    boundary, plus every voxel that has a 6-neighbour in another cell, form
    the membrane (about two voxels thick).  The image shows mid-grey textured
    cytoplasm with per-cell brightness, a few dark organelle specks, dark
    membranes, a Gaussian blur (sigma 1 voxel) and intensity-dependent
    Gaussian noise, so a raw intensity threshold cannot separate membranes
    cleanly.

    Parameters
    ----------
    shape : tuple of int, optional
        Volume shape (Z, Y, X); every entry must be >= 1.
    seed : int, optional
        Seed for :func:`numpy.random.default_rng`; equal seeds give equal
        samples.
    cell_diameter : float, optional
        Typical cell diameter in physical units (same units as
        ``voxel_size``); must be > 0.
    voxel_size : sequence of 3 float, optional
        Physical (z, y, x) voxel size; anisotropic sizes give cells that are
        round in physical space.

    Returns
    -------
    SyntheticSample
        Image, cell labels, membrane mask and centroids.

    Raises
    ------
    ValueError
        If ``shape``, ``cell_diameter`` or ``voxel_size`` are invalid.

    Examples
    --------
    >>> s = make_sample((4, 32, 32), seed=1)
    >>> s.image.dtype, s.cells.dtype, s.image.shape
    (dtype('uint8'), dtype('uint32'), (4, 32, 32))
    >>> bool(np.all(s.membrane == (s.cells == 0)))
    True
    """
    try:
        shape = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape must be a sequence of three integers; got {shape!r}") from None
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape must be three integers >= 1 (Z, Y, X); got {shape!r}")
    cell_diameter = check_positive("cell_diameter", cell_diameter)
    vs = np.asarray(check_voxel_size(voxel_size))
    rng = np.random.default_rng(seed)

    # Seeds live in physical space, in a box padded by half a cell so border
    # cells are cut by the volume edge instead of being unnaturally large.
    extent = np.asarray(shape, float) * vs
    pad = 0.5 * cell_diameter
    low, high = -pad, extent + pad
    box_volume = float(np.prod(high - low))
    target = max(2, int(round(box_volume / (np.pi / 6.0 * cell_diameter**3))))
    seeds = _sample_seeds(rng, low, high, target, 0.6 * cell_diameter, 40 * target)

    grid = np.indices(shape, dtype=np.float64).reshape(3, -1).T * vs
    k = min(5, len(seeds))
    nearest, bdist = _boundary_distance(grid, seeds, k)
    owner = nearest.reshape(shape)
    membrane = (bdist < 0.5 * float(vs.min())).reshape(shape)
    for axis in range(3):
        if shape[axis] > 1:
            diff = np.diff(owner, axis=axis) != 0
            lo = [slice(None)] * 3
            hi = [slice(None)] * 3
            lo[axis] = slice(None, -1)
            hi[axis] = slice(1, None)
            membrane[tuple(lo)] |= diff
            membrane[tuple(hi)] |= diff

    # Contiguous ids 1..N for the cells that kept interior voxels.
    raw = np.where(membrane, -1, owner).ravel()
    present = np.unique(raw[raw >= 0])
    remap = np.zeros(len(seeds), np.uint32)
    remap[present] = np.arange(1, len(present) + 1, dtype=np.uint32)
    cells = np.where(membrane, 0, remap[owner]).astype(np.uint32)
    n_cells = len(present)
    flat = cells.ravel()
    counts = np.bincount(flat, minlength=n_cells + 1)[1:].astype(float)
    coords = np.indices(shape).reshape(3, -1)
    centroids = np.stack(
        [np.bincount(flat, weights=c, minlength=n_cells + 1)[1:] / counts for c in coords],
        axis=1,
    )

    # Render: textured cytoplasm, per-cell brightness, organelle specks.
    brightness = _CYTOPLASM + rng.normal(0.0, _CELL_JITTER, size=n_cells + 1)
    image = brightness[cells]
    texture = ndimage.gaussian_filter(rng.normal(size=shape), sigma=4.0)
    texture /= max(float(texture.std()), 1e-12)
    image += _TEXTURE * texture
    specks = np.zeros(shape)
    interior = np.flatnonzero(~membrane & (bdist.reshape(shape) > 3.0 * vs.min()))
    if interior.size:
        n_specks = max(1, int(3 * n_cells))
        specks.flat[rng.choice(interior, size=min(n_specks, interior.size), replace=False)] = 1.0
        specks = ndimage.gaussian_filter(specks, sigma=1.0)
        specks /= max(float(specks.max()), 1e-12)
    image -= _SPECK_DEPTH * specks
    image[membrane] = _MEMBRANE + rng.normal(0.0, 5.0, size=int(membrane.sum()))
    image = ndimage.gaussian_filter(image, sigma=1.0)
    noise_sd = _NOISE_SD * np.sqrt(np.clip(image, 1.0, None) / _CYTOPLASM)
    image = image + rng.normal(size=shape) * noise_sd
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)

    logger.debug("make_sample: shape=%s cells=%d membrane=%.3f", shape, n_cells, membrane.mean())
    return SyntheticSample(
        image=image,
        cells=cells,
        membrane=membrane,
        centroids=centroids,
        voxel_size=tuple(float(v) for v in vs),
    )
