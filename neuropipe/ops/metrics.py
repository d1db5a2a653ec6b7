"""Evaluation metrics: detection matching, pixel scores and segmentation errors.

Conventions shared by the precision / recall style scores: a ratio whose
denominator is zero is *vacuously* perfect (1.0), and F1 is computed as
``2 tp / (2 tp + fp + fn)`` (1.0 when all three are zero), so nothing ever
divides by zero:

* no detections and no truth: precision = recall = f1 = 1.0;
* detections but no truth: precision = 0.0, recall = 1.0, f1 = 0.0;
* truth but no detections: precision = 1.0, recall = 0.0, f1 = 0.0.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from ._validate import check_fraction, check_positive, check_same_shape, check_voxel_size
from .components import label_components

__all__ = [
    "MatchResult",
    "PixelScores",
    "VariationOfInformation",
    "match_centroids",
    "pixel_scores",
    "adapted_rand_error",
    "membrane_map_scores",
    "variation_of_information",
]

logger = logging.getLogger(__name__)


def _ratio(num, den):
    return float(num) / float(den) if den else 1.0


def _f1(tp, fp, fn):
    den = 2 * tp + fp + fn
    return 2.0 * tp / den if den else 1.0


@dataclass(frozen=True)
class MatchResult:
    """One-to-one matching of detected to true centroids.

    Attributes
    ----------
    precision, recall, f1 : float
        Scores (see the module docstring for the empty-set conventions).
    tp, fp, fn : int
        Matched detections, unmatched detections, unmatched truth points.
    pairs : ndarray of shape (K, 2), int64
        ``(detected_index, truth_index)`` of each match, sorted by detected
        index.
    """

    precision: float
    recall: float
    f1: float
    tp: int
    fp: int
    fn: int
    pairs: np.ndarray


@dataclass(frozen=True)
class PixelScores:
    """Voxel-wise agreement of a thresholded probability map with a mask.

    Attributes
    ----------
    pixel_error : float
        Fraction of voxels where prediction and truth disagree.
    precision, recall, f1 : float
        For the positive (True) class; empty-set conventions as in the
        module docstring.
    """

    pixel_error: float
    precision: float
    recall: float
    f1: float


@dataclass(frozen=True)
class VariationOfInformation:
    """Split and merge parts of the variation of information, in bits.

    Attributes
    ----------
    split : float
        ``H(seg | truth)``: large when true objects are broken into pieces.
    merge : float
        ``H(truth | seg)``: large when true objects are fused together.
    """

    split: float
    merge: float

    @property
    def total(self):
        """Variation of information ``split + merge`` (float, bits)."""
        return self.split + self.merge


def _points(arr, name):
    a = np.asarray(arr, dtype=np.float64)
    if a.size == 0:
        return np.zeros((0, 3))
    if a.ndim != 2 or a.shape[1] != 3:
        raise ValueError(f"{name} must have shape (N, 3) (ZYX rows); got shape {a.shape}")
    n_bad = int(np.count_nonzero(~np.isfinite(a)))
    if n_bad:
        raise ValueError(f"{name} contains {n_bad} NaN or infinite coordinate(s)")
    return a


def _optimal_pairs(det, tru, radius):
    """Maximum one-to-one matching within ``radius`` with the least total distance.

    Candidate pairs are split into connected groups (a detection and a truth
    point are linked when within ``radius``), and each group is solved by
    :func:`~scipy.optimize.linear_sum_assignment` with out-of-range pairs
    given a cost larger than any sum of in-range distances, so that the
    number of matches is maximised first.
    """
    n, m = len(det), len(tru)
    candidates = cKDTree(det).query_ball_tree(cKDTree(tru), r=radius)
    rows = np.repeat(np.arange(n), [len(c) for c in candidates])
    cols = np.fromiter((j for c in candidates for j in c), np.int64, count=len(rows))
    if not len(rows):
        return np.zeros((0, 2), np.int64)
    dist = np.linalg.norm(det[rows] - tru[cols], axis=1)
    graph = sparse.coo_matrix((np.ones(len(rows)), (rows, n + cols)), shape=(n + m, n + m))
    group_of = connected_components(graph, directed=False)[1][rows]
    order = np.argsort(group_of, kind="stable")
    found = []
    for group in np.split(order, np.flatnonzero(np.diff(group_of[order])) + 1):
        r_ids, r_loc = np.unique(rows[group], return_inverse=True)
        c_ids, c_loc = np.unique(cols[group], return_inverse=True)
        forbidden = radius * (min(len(r_ids), len(c_ids)) + 1) + 1.0
        cost = np.full((len(r_ids), len(c_ids)), forbidden)
        cost[r_loc, c_loc] = dist[group]
        ri, ci = linear_sum_assignment(cost)
        ok = cost[ri, ci] < forbidden
        found.extend(zip(r_ids[ri[ok]], c_ids[ci[ok]]))
    return np.array(sorted(found), np.int64).reshape(-1, 2)


def match_centroids(detected, truth, *, radius, voxel_size=None):
    """Optimally match detected to true centroids within a distance.

    Candidate pairs closer than or at ``radius`` (physical units) are found
    with a k-d tree; each connected group of candidates is then solved with
    :func:`scipy.optimize.linear_sum_assignment` so that the number of
    matches is maximal and, among maximal matchings, the summed distance is
    minimal.  Each detection and truth point is used at most once.

    Parameters
    ----------
    detected : array_like of shape (N, 3), float
        Detected ZYX voxel coordinates (an empty array means none).
    truth : array_like of shape (M, 3), float
        True ZYX voxel coordinates.
    radius : float
        Maximum matching distance (> 0), in the units of ``voxel_size``.
    voxel_size : sequence of 3 float, optional
        Physical (z, y, x) voxel size; coordinates are scaled by it.

    Returns
    -------
    MatchResult

    Raises
    ------
    ValueError
        On malformed coordinates, non-positive ``radius`` or bad
        ``voxel_size``.

    Examples
    --------
    >>> r = match_centroids([[0, 0, 0], [0, 0, 9]], [[0, 0, 1]], radius=2)
    >>> r.tp, r.fp, r.fn, r.pairs.tolist()
    (1, 1, 0, [[0, 0]])
    """
    radius = check_positive("radius", radius)
    scale = np.asarray(check_voxel_size(voxel_size))
    det = _points(detected, "detected") * scale
    tru = _points(truth, "truth") * scale
    n, m = len(det), len(tru)
    pairs = _optimal_pairs(det, tru, radius) if n and m else np.zeros((0, 2), np.int64)
    tp = len(pairs)
    fp, fn = n - tp, m - tp
    return MatchResult(
        precision=_ratio(tp, tp + fp), recall=_ratio(tp, tp + fn), f1=_f1(tp, fp, fn),
        tp=tp, fp=fp, fn=fn, pairs=pairs,
    )


def _binary(arr, name):
    a = np.asarray(arr)
    if a.dtype == np.bool_:
        return a
    if np.issubdtype(a.dtype, np.integer) and np.all((a == 0) | (a == 1)):
        return a.astype(bool)
    raise ValueError(f"{name} must be a boolean mask (or 0/1 integers); got dtype {a.dtype}")


def pixel_scores(prob, truth, *, threshold=0.5):
    """Compare ``prob > threshold`` with a boolean truth mask, voxel by voxel.

    Parameters
    ----------
    prob : array_like, float
        Probabilities (any shape, typically ZYX).
    truth : array_like, bool
        True on positive (e.g. membrane) voxels; same shape as ``prob``.
    threshold : float, optional
        Decision threshold in [0, 1].

    Returns
    -------
    PixelScores

    Raises
    ------
    ValueError
        On shape mismatch, empty input, NaNs in ``prob`` or a non-boolean
        ``truth``.

    Examples
    --------
    >>> s = pixel_scores(np.array([0.9, 0.2, 0.8, 0.1]), np.array([True, True, False, False]))
    >>> s.pixel_error, s.precision, s.recall
    (0.5, 0.5, 0.5)
    """
    threshold = check_fraction("threshold", threshold)
    p = np.asarray(prob)
    t = _binary(truth, "truth")
    check_same_shape(p, t, "prob", "truth")
    if p.size == 0:
        raise ValueError(f"prob must not be empty; got shape {p.shape}")
    if not (np.issubdtype(p.dtype, np.floating) or np.issubdtype(p.dtype, np.integer)
            or p.dtype == np.bool_):
        raise ValueError(f"prob must be numeric; got dtype {p.dtype}")
    n_nan = int(np.count_nonzero(np.isnan(p))) if np.issubdtype(p.dtype, np.floating) else 0
    if n_nan:
        raise ValueError(f"prob contains {n_nan} NaN value(s)")
    pred = p > threshold
    tp = int(np.count_nonzero(pred & t))
    fp = int(np.count_nonzero(pred & ~t))
    fn = int(np.count_nonzero(~pred & t))
    return PixelScores(
        pixel_error=(fp + fn) / p.size,
        precision=_ratio(tp, tp + fp),
        recall=_ratio(tp, tp + fn),
        f1=_f1(tp, fp, fn),
    )


def _contingency(seg, truth):
    """Contingency table over voxels with ``truth != 0`` (rows truth, cols seg)."""
    s = np.asarray(seg)
    t = np.asarray(truth)
    for name, a in (("seg", s), ("truth", t)):
        if not (np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_):
            raise ValueError(f"{name} must be an integer label array; got dtype {a.dtype}")
    check_same_shape(s, t, "seg", "truth")
    keep = t.ravel() != 0
    if not np.any(keep):
        raise ValueError(
            f"truth has no labelled (non-zero) voxels out of {t.size}; nothing to evaluate"
        )
    t_ids, t_inv = np.unique(t.ravel()[keep], return_inverse=True)
    s_ids, s_inv = np.unique(s.ravel()[keep], return_inverse=True)
    table = sparse.coo_matrix(
        (np.ones(t_inv.size, np.float64), (t_inv, s_inv)), shape=(len(t_ids), len(s_ids))
    ).tocsr()
    table.sum_duplicates()
    return table, s_ids


def adapted_rand_error(seg, truth):
    """Adapted Rand error (ISBI 2012 / CREMI convention).

    Only voxels with ``truth != 0`` are counted.  With ``n_ij`` the number of
    such voxels in truth object ``i`` and segment ``j``, ``t_i`` and ``s_j``
    the marginals, the Rand precision is ``sum n_ij**2 / sum s_j**2`` and the
    Rand recall ``sum n_ij**2 / sum t_i**2``; the error is ``1 - F1`` of the
    two.  Voxels with ``seg == 0`` (inside labelled truth) are treated as
    singleton segments, each its own object, which is what the CREMI code
    intends (it adds their count divided by the volume size, a known
    quirk that is *not* reproduced here).

    Parameters
    ----------
    seg : array_like, integer
        Candidate segmentation (any shape).
    truth : array_like, integer
        Ground-truth segmentation, same shape; 0 is ignored.

    Returns
    -------
    float
        Error in [0, 1]; 0 for a perfect segmentation.

    Raises
    ------
    ValueError
        On shape mismatch, non-integer labels or a truth without labels.

    Examples
    --------
    >>> round(adapted_rand_error(np.array([1, 1, 1, 1]), np.array([1, 1, 2, 2])), 6)
    0.333333
    """
    table, s_ids = _contingency(seg, truth)
    zero_col = np.flatnonzero(s_ids == 0)
    singles = float(table[:, zero_col].sum()) if zero_col.size else 0.0
    if zero_col.size:
        mask = np.ones(len(s_ids), bool)
        mask[zero_col] = False
        counted = table[:, mask]
    else:
        counted = table
    t_sizes = np.asarray(table.sum(axis=1)).ravel()
    s_sizes = np.asarray(counted.sum(axis=0)).ravel()
    sum_p = float(counted.multiply(counted).sum()) + singles
    sum_t = float(t_sizes @ t_sizes)
    sum_s = float(s_sizes @ s_sizes) + singles
    precision, recall = sum_p / sum_s, sum_p / sum_t
    return float(1.0 - 2.0 * precision * recall / (precision + recall))


def variation_of_information(seg, truth):
    """Split / merge variation of information (CREMI convention, bits).

    Computed over voxels with ``truth != 0``; ``seg == 0`` is an ordinary
    label there (as in CREMI, which ignores only truth 0).  ``split`` is
    ``H(seg | truth)`` and ``merge`` is ``H(truth | seg)``, with base-2
    logarithms as in the CREMI / gala code.

    Parameters
    ----------
    seg, truth : array_like, integer
        As for :func:`adapted_rand_error`.

    Returns
    -------
    VariationOfInformation

    Raises
    ------
    ValueError
        As for :func:`adapted_rand_error`.

    Examples
    --------
    >>> v = variation_of_information(np.array([1, 1, 2, 2]), np.array([1, 1, 1, 1]))
    >>> v.split, v.merge
    (1.0, 0.0)
    """
    table, _ = _contingency(seg, truth)
    n = float(table.sum())
    p = table.data / n
    p_t = np.asarray(table.sum(axis=1)).ravel() / n
    p_s = np.asarray(table.sum(axis=0)).ravel() / n
    h_joint = -float(np.sum(p * np.log2(p)))
    h_t = -float(np.sum(p_t * np.log2(p_t)))
    h_s = -float(np.sum(p_s * np.log2(p_s)))
    split = max(h_joint - h_t, 0.0)
    merge = max(h_joint - h_s, 0.0)
    return VariationOfInformation(split=split + 0.0, merge=merge + 0.0)


def membrane_map_scores(prob, membrane, cells, *, threshold, voxel_size=None) -> dict:
    """Score a membrane probability map against annotated membrane and cells (ISBI 2012 conventions).

    Voxels with ``prob > threshold`` are membrane (:func:`pixel_scores`); the cells the map
    separates are the face-connected components of the rest (labelled plane by plane for
    thick sections, as :func:`~neuropipe.ops.label_components` decides from ``voxel_size``),
    scored against the annotated cells by :func:`adapted_rand_error`.

    Parameters
    ----------
    prob : array_like of shape (Z, Y, X), float
        Membrane probability.
    membrane : array_like of shape (Z, Y, X), bool
        True on annotated membrane.
    cells : array_like of shape (Z, Y, X), integer
        Annotated cell labels, 0 = none.
    threshold : float
        Probability above which a voxel is membrane.
    voxel_size : sequence of 3 float, optional
        Physical (z, y, x) voxel size; ``None`` means isotropic.

    Returns
    -------
    dict
        ``pixel_error``, ``precision``, ``recall``, ``f1`` (of membrane voxels) and
        ``adapted_rand_error`` (of the cells).

    Examples
    --------
    >>> cells = np.zeros((1, 4, 5), np.uint32); cells[0, :, :2], cells[0, :, 3:] = 1, 2
    >>> prob = (cells == 0).astype(float)
    >>> scores = membrane_map_scores(prob, cells == 0, cells, threshold=0.5)
    >>> scores["pixel_error"], scores["adapted_rand_error"]
    (0.0, 0.0)
    """
    prob = np.asarray(prob)
    pixels = pixel_scores(prob, membrane, threshold=threshold)
    segments = label_components(prob <= threshold, connectivity=6, voxel_size=voxel_size).labels
    return dict(pixel_error=pixels.pixel_error, precision=pixels.precision, recall=pixels.recall, f1=pixels.f1,
                adapted_rand_error=adapted_rand_error(segments, np.asarray(cells)))
