"""Scores of the pipeline's results against expert annotations.

Every result whose dataset has an :class:`~schemas.volume.AnnotationVolume` is scored:
membrane maps pixel by pixel (:class:`MembraneMetrics`), detections by one-to-one matching
of centroids (:class:`DetectionMetrics`).
"""

import numpy as np

from neuropipe import ops
from neuropipe.database import import_datajoint
from neuropipe.io.stored import open_stored
from neuropipe.params import ParamSet, fraction, positive
from schemas.detection import CellDetection
from schemas.membrane import MembraneMap
from schemas.volume import AnnotationVolume, Dataset

dj = import_datajoint()
schema = dj.Schema()


def scoring_options(*, radius: float = 5.0, threshold: float = 0.5) -> dict:
    """Options of the scores.

    Parameters
    ----------
    radius : float, optional
        Largest distance, in voxels of the finest axis, at which a detected centroid matches
        an annotated one (:func:`neuropipe.ops.match_centroids`). Default 5.
    threshold : float, optional
        Membrane probability above which a voxel counts as membrane
        (:func:`neuropipe.ops.pixel_scores`). Default 0.5.
    """
    return {"radius": radius, "threshold": threshold}


@schema
class MetricsParams(ParamSet, dj.Lookup):
    """Options of :func:`scoring_options`, keyed by their hash."""

    key_name = "metrics_id"
    kernel = staticmethod(scoring_options)
    rules = {"radius": (positive, "a positive distance in voxels"), "threshold": (fraction, "a probability in [0, 1]")}
    definition = """
    metrics_id : char(16)                 # content hash of params
    ---
    params : json                         # radius, threshold
    description = "" : varchar(255)
    """


@schema
class MembraneMetrics(dj.Computed):
    """A membrane map scored against the annotated membrane (ISBI 2012 conventions)."""

    definition = """
    -> MembraneMap
    -> MetricsParams
    ---
    pixel_error : float64                 # fraction of voxels classified wrongly
    precision : float64                   # of membrane voxels
    recall : float64
    f1 : float64
    adapted_rand_error : float64          # of the cells the map separates, vs the annotated cells
    """

    @property
    def key_source(self):
        """Membrane maps of annotated datasets, under every metrics parameter set."""
        return (MembraneMap.proj() & AnnotationVolume) * MetricsParams.proj()

    def make(self, key):
        """Score the probability map against the annotation."""
        options = scoring_options(**MetricsParams().fetch_params(key))
        probability = np.asarray(open_stored((MembraneMap & key).fetch1("probability")))
        membrane, cells = (AnnotationVolume & key).fetch1("membrane", "cells")
        scores = ops.pixel_scores(probability, np.asarray(membrane), threshold=options["threshold"])
        voxel_size = (Dataset & key).fetch1("voxel_z_nm", "voxel_y_nm", "voxel_x_nm")
        segments = ops.label_components(probability <= options["threshold"], connectivity=6,
                                        voxel_size=voxel_size).labels
        self.insert1(dict(key, pixel_error=scores.pixel_error, precision=scores.precision, recall=scores.recall,
                          f1=scores.f1, adapted_rand_error=ops.adapted_rand_error(segments, np.asarray(cells))))


@schema
class DetectionMetrics(dj.Computed):
    """Detected cells matched one-to-one to annotated cells within a radius."""

    definition = """
    -> CellDetection
    -> MetricsParams
    ---
    precision : float64
    recall : float64
    f1 : float64
    true_positives : int32
    false_positives : int32
    false_negatives : int32
    """

    @property
    def key_source(self):
        """Detections in annotated datasets, under every metrics parameter set."""
        return (CellDetection.proj() & AnnotationVolume) * MetricsParams.proj()

    def make(self, key):
        """Match detected to annotated centroids and count."""
        self.insert1(dict(key, **match_to_annotation(key, CellDetection.Cell & key)))


def match_to_annotation(key: dict, detected_cells) -> dict:
    """Match the centroids of ``detected_cells`` one-to-one to the annotated cells of ``key``'s dataset.

    Returns
    -------
    dict
        precision, recall, f1, true_positives, false_positives, false_negatives.
    """
    options = scoring_options(**MetricsParams().fetch_params(key))
    truth = _centroids(AnnotationVolume.Cell & {"dataset": key["dataset"]})
    spacing = np.asarray((Dataset & key).fetch1("voxel_z_nm", "voxel_y_nm", "voxel_x_nm"), dtype=float)
    match = ops.match_centroids(_centroids(detected_cells), truth, radius=options["radius"],
                                voxel_size=spacing / spacing.min())
    return dict(precision=match.precision, recall=match.recall, f1=match.f1, true_positives=match.tp,
                false_positives=match.fp, false_negatives=match.fn)


def _centroids(cells) -> np.ndarray:
    rows = cells.to_arrays("centroid_z", "centroid_y", "centroid_x")
    return np.stack(rows, axis=1) if len(rows[0]) else np.zeros((0, 3))
