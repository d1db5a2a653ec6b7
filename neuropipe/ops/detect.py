"""Cell detection in a cell-probability volume.

Four methods are provided:

``"spheres"``
    The greedy sphere-template detector of xbrain (Dyer et al., 2017,
    eNeuro 4(5)): repeatedly take the position whose surrounding ball has
    the highest mean (thresholded) probability, accept it as a cell, erase
    the probability in a slightly larger ball around it and update the
    score map locally.
``"components"``
    Threshold, connected components, dust removal.
``"blobs"``
    Multi-scale Laplacian-of-Gaussian blob detection (see
    :mod:`neuropipe.ops._blobs`): finds each cell at its own size, so it
    separates touching cells of mixed sizes where one sphere template
    splits the large ones and merges the small ones.
``"learned"``
    One cell per peak of the centre map a nuclei network trained on annotated cells
    predicts (:mod:`neuropipe.ops.nuclei`): separates touching nuclei that show no seam.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
from scipy.signal import fftconvolve, oaconvolve

from ._blobs import detect_blobs, detect_centres
from ._validate import (
    as_volume,
    check_fraction,
    check_nonnegative,
    check_nonnegative_int,
    check_positive,
    check_positive_int,
    check_same_shape,
    check_voxel_size,
)
from .components import label_components

__all__ = ["DETECTION_DEFAULTS", "DETECTION_METHODS", "Detections", "components_connectivity", "detect_cells"]

logger = logging.getLogger(__name__)

DETECTION_METHODS = ("spheres", "components", "blobs", "learned")
_PROB_TOLERANCE = 1e-6


@dataclass(frozen=True)
class Detections:
    """Detected cells.

    Attributes
    ----------
    centroids : ndarray of shape (N, 3), float64
        ZYX voxel coordinates of each detection.
    scores : ndarray of shape (N,), float64
        Detection score (sphere method: mean thresholded probability in the
        ball; the other methods: mean probability in the object).
    labels : ndarray of shape (Z, Y, X), uint32
        Voxels of detection ``i`` carry id ``i + 1``; 0 elsewhere.
    voxel_counts : ndarray of shape (N,), int64
        Number of voxels with id ``i + 1`` in ``labels``.
    """

    centroids: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    voxel_counts: np.ndarray

    @property
    def count(self):
        """Number of detections N (int)."""
        return int(self.scores.shape[0])


def _ellipsoid(diameter, voxel_size):
    """Boolean ball of ``diameter`` voxels along the finest axis, as an ellipsoid in voxels.

    The physical diameter is ``diameter * min(voxel_size)``; the semi-axis
    along axis ``i`` is that half-diameter divided by ``voxel_size[i]``.
    The kernel has odd side ``2 * floor(semi_axis) + 1`` and is centred.
    """
    vs = np.asarray(voxel_size, float)
    radii = 0.5 * diameter * vs.min() / vs
    half = np.floor(radii + 1e-9).astype(int)
    axes = [np.arange(-h, h + 1) / r for h, r in zip(half, radii)]
    zz, yy, xx = np.meshgrid(*axes, indexing="ij")
    return zz**2 + yy**2 + xx**2 <= 1.0 + 1e-9


def _window(shape, centre, kernel_shape):
    """Slices of a kernel centred at ``centre``, clipped to a volume of ``shape``."""
    vol, ker = [], []
    for n, c, k in zip(shape, centre, kernel_shape):
        h = k // 2
        lo, hi = max(c - h, 0), min(c + h + 1, n)
        vol.append(slice(lo, hi))
        ker.append(slice(lo - (c - h), hi - (c - h)))
    return tuple(vol), tuple(ker)


def _empty(shape):
    return Detections(
        centroids=np.zeros((0, 3), np.float64),
        scores=np.zeros(0, np.float64),
        labels=np.zeros(shape, np.uint32),
        voxel_counts=np.zeros(0, np.int64),
    )


def _local_scores(q, kernel, norm, lo, hi):
    """Exact ball means of ``q`` for the box [lo, hi), with zeros outside the volume."""
    half = np.array(kernel.shape) // 2
    src_lo, src_hi = lo - half, hi + half
    clo, chi = np.maximum(src_lo, 0), np.minimum(src_hi, q.shape)
    padded = np.zeros(tuple(src_hi - src_lo))
    padded[tuple(slice(a - s, b - s) for a, b, s in zip(clo, chi, src_lo))] = \
        q[tuple(slice(a, b) for a, b in zip(clo, chi))]
    region = tuple(slice(a, b) for a, b in zip(lo, hi))
    return fftconvolve(padded, kernel, mode="valid") / norm[region]


def _detect_spheres(prob, threshold, stop, sphere_size, dilation, max_cells, voxel_size):
    shape = prob.shape
    q = np.where(prob > threshold, prob, 0.0)
    template = _ellipsoid(sphere_size, voxel_size)
    eraser = _ellipsoid(sphere_size + dilation, voxel_size)
    kernel = template.astype(np.float64)
    reach = np.array(eraser.shape) // 2 + np.array(template.shape) // 2
    # Mean over the in-volume part of the ball: divide by the in-volume voxel count.
    norm = np.maximum(np.rint(oaconvolve(np.ones(shape), kernel, mode="same")), 1.0)
    score = oaconvolve(q, kernel, mode="same") / norm
    plane_max = score.reshape(shape[0], -1).max(axis=1)  # argmax without a full scan
    labels = np.zeros(shape, np.uint32)
    centres, scores = [], []
    while len(centres) < max_cells:
        z = int(np.argmax(plane_max))
        flat = int(np.argmax(score[z]))
        best = float(score[z].flat[flat])
        if best < stop:
            break
        centre = (z, *(int(i) for i in np.unravel_index(flat, shape[1:])))
        centres.append(centre)
        scores.append(best)
        vsl, ksl = _window(shape, centre, template.shape)
        labels[vsl][template[ksl] & (labels[vsl] == 0)] = len(centres)
        vsl, ksl = _window(shape, centre, eraser.shape)
        q[vsl][eraser[ksl]] = 0.0
        # Exact local update of every score whose ball overlaps the erased ball.
        lo = np.maximum(np.array(centre) - reach, 0)
        hi = np.minimum(np.array(centre) + reach + 1, shape)
        score[tuple(slice(a, b) for a, b in zip(lo, hi))] = _local_scores(q, kernel, norm, lo, hi)
        plane_max[lo[0]:hi[0]] = score[lo[0]:hi[0]].reshape(hi[0] - lo[0], -1).max(axis=1)
    if not centres:
        return _empty(shape)
    counts = np.bincount(labels.ravel(), minlength=len(centres) + 1)[1:].astype(np.int64)
    return Detections(centroids=np.asarray(centres, np.float64), scores=np.asarray(scores, np.float64),
                      labels=labels, voxel_counts=counts)


def components_connectivity(voxel_size) -> int:
    """Return the connectivity of ``method='components'``: 26, or 6 for anisotropic voxels.

    Parameters
    ----------
    voxel_size : sequence of 3 float
        Physical (z, y, x) voxel size.

    Returns
    -------
    int

    Examples
    --------
    >>> components_connectivity((1.0, 1.0, 1.0)), components_connectivity((50, 4, 4))
    (26, 6)
    """
    return 6 if len(set(voxel_size)) > 1 else 26


def _detect_components(prob, threshold, max_cells, min_voxels, voxel_size):
    comps = label_components(prob > threshold, connectivity=components_connectivity(voxel_size),
                             dust=min_voxels, voxel_size=voxel_size)
    n = comps.count
    if n == 0:
        return _empty(prob.shape)
    keep = np.arange(n)
    if n > max_cells:
        order = np.lexsort((np.arange(n), -comps.voxel_counts))  # largest first, then by id
        keep = np.sort(order[:max_cells])
    lut = np.zeros(n + 1, np.uint32)
    lut[keep + 1] = np.arange(1, len(keep) + 1, dtype=np.uint32)
    labels = lut[comps.labels]
    sums = np.bincount(comps.labels.ravel(), weights=prob.ravel(), minlength=n + 1)[1:]
    return Detections(
        centroids=comps.centroids[keep],
        scores=sums[keep] / comps.voxel_counts[keep],
        labels=labels,
        voxel_counts=comps.voxel_counts[keep],
    )


def detect_cells(prob, *, threshold=0.2, stop=0.47, sphere_size=18, dilation=8, max_cells=500,
                 voxel_size=None, method="spheres", min_voxels=10, centres=None):
    """Detect cells in a probability volume.

    ``method="spheres"`` (xbrain greedy sphere detection):

    1. ``Q = P * (P > threshold)``.
    2. The score of a voxel is the mean of ``Q`` over the ball of diameter
       ``sphere_size`` centred on it.  Balls cut by the volume border use the
       mean over their in-volume part (voxels outside are not counted), so a
       cell cut by the border still scores like a whole one.
    3. Repeatedly take the highest-scoring voxel (first in C order on ties);
       stop when its score is below ``stop`` or ``max_cells`` cells were
       accepted.  Accept it (centroid = ball centre, score = its score),
       give the still-unlabelled voxels of its ball the next id, set ``Q``
       to zero in a concentric ball of diameter ``sphere_size + dilation``
       and recompute the score exactly wherever its ball overlaps the erased
       region.

    With anisotropic ``voxel_size`` the balls are ellipsoids in voxel space
    with physical diameter ``sphere_size * min(voxel_size)``.

    ``method="components"``: voxels with ``P > threshold`` (0.5 is typical
    for this method) are grouped into connected components (26-connectivity,
    6 when ``voxel_size`` is anisotropic, plane by plane for thick sections
    as :func:`label_components` decides); components smaller than
    ``min_voxels`` are dropped, at most ``max_cells`` of the largest are
    kept, and they are numbered in raster order of their first voxel.
    Centroids are the component centroids; scores the mean ``P``.

    ``method="blobs"``: the scale-normalised Laplacian of Gaussian of ``P``
    is computed for ball radii from 0.7 to 1.6 times ``sphere_size / 2``
    (the expected cell diameter; physical units with ``voxel_size``, the
    volume mirrored at its border) and its maximum over scales taken; every
    local maximum inside ``P > threshold`` (0.5 to 0.85 suit a GMM map), at
    least ``sphere_size / 4`` from a stronger one and with at least a tenth
    of the response of a ball of probability 1, is a cell.  Each voxel of
    the mask (``P`` smoothed by one voxel, ``> threshold``, enclosed holes
    filled) goes to the cell nearest relative to its scale (the labels);
    cells with fewer than ``min_voxels`` voxels are dropped, at most
    ``max_cells`` of the strongest are kept, the centroid is that of the
    cell's voxels (for a cell cut by the border, the centre of the part in
    view; for an elongated cell, its middle) and the score is the mean
    ``P`` of its voxels.  Touching cells of different sizes separate.  Two
    touching cells whose centroids are closer than 0.8 ``sphere_size`` are
    then one (the two peaks of an elongated cell; each cell merges at most
    once, closest pairs first), placed at the centroid of both.

    ``method="learned"``: ``P`` is the foreground probability and ``centres``
    the centre map of :func:`~neuropipe.ops.predict_nuclei`.  Every local
    maximum of ``centres`` of at least ``stop`` (0.3 to 0.6 suit) inside
    ``P > threshold`` (holes filled), at least ``sphere_size / 4`` from a
    stronger one, is a cell; the mask is shared out, cells dropped and kept
    and centroids and scores computed as for blobs.

    Parameters
    ----------
    prob : array_like of shape (Z, Y, X), float
        Cell probability in [0, 1] (values up to 1e-6 outside are clipped).
    threshold : float, optional
        Probability threshold in [0, 1].
    stop : float, optional
        Minimum sphere score in [0, 1] (spheres), or centre-map peak (learned).
    sphere_size : float, optional
        Expected cell diameter in voxels along the finest axis (spheres: the
        ball; blobs and learned: sets the scales and the peak separation).
    dilation : float, optional
        Extra diameter of the erased ball, >= 0 (spheres only).
    max_cells : int, optional
        Maximum number of detections, >= 1.
    voxel_size : sequence of 3 float, optional
        Physical (z, y, x) voxel size; ``None`` means isotropic.
    method : {'spheres', 'components', 'blobs', 'learned'}, optional
        Detection method. Default 'spheres' (xbrain).
    min_voxels : int, optional
        Smallest object kept, in voxels (components, blobs and learned).
    centres : array_like of shape (Z, Y, X), float, optional
        Predicted centre map in [0, 1] (learned only, where it is required).

    Returns
    -------
    Detections
        Centroids, scores, a uint32 label volume and voxel counts, in
        detection order (spheres: order of acceptance, so scores mostly
        decrease).  A sphere's label covers only the voxels of its ball that
        no earlier sphere took, clipped to the volume.

    Raises
    ------
    ValueError
        On an unknown ``method``, parameters out of range, a ``prob`` (or
        ``centres``) that is not a finite, non-empty 3-D array with values in
        [0, 1], or ``centres`` missing for 'learned' or given to another method.

    Examples
    --------
    >>> p = np.zeros((9, 9, 9)); p[2:7, 2:7, 2:7] = 1.0
    >>> d = detect_cells(p, sphere_size=5, dilation=2)
    >>> d.centroids.tolist(), d.scores.round(3).tolist()
    ([[4.0, 4.0, 4.0]], [1.0])
    """
    if method not in DETECTION_METHODS:
        raise ValueError(f"method must be one of {DETECTION_METHODS}; got {method!r}")
    threshold = check_fraction("threshold", threshold)
    stop = check_fraction("stop", stop)
    sphere_size = check_positive("sphere_size", sphere_size)
    dilation = check_nonnegative("dilation", dilation)
    max_cells = check_positive_int("max_cells", max_cells)
    min_voxels = check_nonnegative_int("min_voxels", min_voxels)
    voxel_size = check_voxel_size(voxel_size)
    prob = _probability(prob, "prob")
    if (centres is None) == (method == "learned"):
        raise ValueError("centres (the centre map of predict_nuclei) is needed by method='learned' and only by it")

    if method == "spheres":
        result = _detect_spheres(prob, threshold, stop, sphere_size, dilation, max_cells, voxel_size)
    elif method == "components":
        result = _detect_components(prob, threshold, max_cells, min_voxels, voxel_size)
    else:
        if method == "blobs":
            found = detect_blobs(prob, threshold, sphere_size, max_cells, min_voxels, voxel_size)
        else:
            centres = _probability(centres, "centres")
            check_same_shape(prob, centres, "prob", "centres")
            found = detect_centres(prob, centres, threshold, stop, sphere_size, max_cells, min_voxels, voxel_size)
        result = _empty(prob.shape) if found is None else Detections(
            labels=found[0], centroids=found[1], scores=found[2], voxel_counts=found[3])
    logger.debug("detect_cells(%s): %d detections", method, result.count)
    return result


DETECTION_DEFAULTS = MappingProxyType({name: value for name, value in detect_cells.__kwdefaults__.items()
                                        if name not in ("voxel_size", "centres")})
"""The parameters of :func:`detect_cells` and their defaults, read from its signature.

``voxel_size`` and ``centres`` come with the data and are not among them.  What a parameter
set leaves out takes these values.
"""


def _probability(values, name):
    """Return ``values`` as a float64 volume in [0, 1] (clipping rounding errors), or raise ValueError."""
    values = as_volume(values, name)
    lo, hi = float(values.min()), float(values.max())
    if lo < -_PROB_TOLERANCE or hi > 1.0 + _PROB_TOLERANCE:
        raise ValueError(f"{name} must lie in [0, 1]; got values in [{lo}, {hi}]")
    return np.clip(values.astype(np.float64), 0.0, 1.0)
