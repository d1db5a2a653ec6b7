"""Scores of the pipeline's results against expert annotations.

Every result whose dataset has an :class:`~schemas.volume.AnnotationVolume` is scored:
membrane maps pixel by pixel (:class:`MembraneMetrics`), detections by one-to-one matching
of centroids (:class:`DetectionMetrics`).  Both are steps (:func:`neuropipe.steps.step`)
sharing the options of :class:`MetricsParams`; the annotations they read restrict which
results are scored rather than being parents of the scores.
"""

from typing import TypedDict

import numpy as np

from neuropipe import ops, steps
from neuropipe.database import import_datajoint
from neuropipe.params import ParamSet, fraction, positive
from schemas.detection import CellDetection  # noqa: F401 (the tables scored; their modules provide the inputs)
from schemas.membrane import MembraneMap  # noqa: F401
from schemas.volume import AnnotationVolume, Dataset  # noqa: F401

dj = import_datajoint()
schema = dj.Schema()


def scoring_options(*, radius: float = 5.0, threshold: float = 0.5) -> dict:
    """Options of the scores; this signature is the one statement of their defaults (see :class:`MetricsParams`).

    Parameters
    ----------
    radius : float, optional
        Largest distance, in voxels of the finest axis, at which a detected centroid matches
        an annotated one (:func:`neuropipe.ops.match_centroids`).
    threshold : float, optional
        Membrane probability above which a voxel counts as membrane
        (:func:`neuropipe.ops.membrane_map_scores`).
    """
    return {"radius": radius, "threshold": threshold}


@schema
class MetricsParams(ParamSet, dj.Lookup):
    """Options of :func:`scoring_options`, keyed by their hash."""

    key_name = "metrics_id"
    kernel = staticmethod(scoring_options)
    rules = {"radius": (positive, "a positive distance in voxels"), "threshold": (fraction, "a probability in [0, 1]")}


class MembraneScores(TypedDict):
    """A membrane map against the annotated membrane: of its voxels (ISBI 2012), then of the cells it separates."""

    pixel_error: float  # fraction of voxels classified wrongly
    precision: float  # of membrane voxels
    recall: float
    f1: float
    adapted_rand_error: float  # of the cells the map separates, vs the annotated cells


class CentroidScores(TypedDict):
    """Detected cells matched one-to-one to annotated cells: the scores and the counts."""

    precision: float
    recall: float
    f1: float
    true_positives: np.int32
    false_positives: np.int32
    false_negatives: np.int32


@steps.step(schema, params=MetricsParams)
def membrane_metrics(probability, annotated_membrane, annotated_labels, voxel_size, *,
                     threshold: float = 0.5) -> MembraneScores:
    """Score a membrane map against the annotated membrane and cells (ISBI 2012 conventions)."""
    return ops.membrane_map_scores(np.asarray(probability), np.asarray(annotated_membrane), annotated_labels,
                                   threshold=threshold, voxel_size=voxel_size)


def centroid_scores(detected, annotated, voxel_size, *, radius: float) -> CentroidScores:
    """Match detected to annotated centroids one-to-one within ``radius`` voxels of the finest axis; count."""
    spacing = np.asarray(voxel_size, dtype=float)
    match = ops.match_centroids(detected, annotated, radius=radius, voxel_size=spacing / spacing.min())
    return CentroidScores(precision=match.precision, recall=match.recall, f1=match.f1, true_positives=match.tp,
                          false_positives=match.fp, false_negatives=match.fn)


@steps.step(schema, params=MetricsParams)
def detection_metrics(cells, annotated_cells, voxel_size, *, radius: float = 5.0) -> CentroidScores:
    """Match the detected cells one-to-one to the annotated cells within a radius, and count."""
    return centroid_scores(cells, annotated_cells, voxel_size, radius=radius)
