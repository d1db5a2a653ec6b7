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
from schemas.volume import AnnotationVolume, Dataset, centroids

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
        probability = np.asarray(open_stored((MembraneMap & key).fetch1("probability")))
        membrane, cells = (AnnotationVolume & key).fetch1("membrane", "cells")
        self.insert1(dict(key, **ops.membrane_map_scores(probability, np.asarray(membrane), cells,
                                                         threshold=MetricsParams().fetch_effective(key)["threshold"],
                                                         voxel_size=Dataset.voxel_size(key))))


class CentroidMetrics:
    """Mixin for a table of detected cells matched one-to-one to annotated cells within a radius.

    ``detections`` is the table of detections scored (with a part table ``Cell`` of centroids).
    """

    detections = None
    definition_tail = """
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
        return (self.detections.proj() & AnnotationVolume) * MetricsParams.proj()

    def make(self, key):
        """Match detected to annotated centroids (radius in voxels of the finest axis) and count."""
        spacing = np.asarray(Dataset.voxel_size(key), dtype=float)
        match = ops.match_centroids(centroids(self.detections.Cell & key),
                                    centroids(AnnotationVolume.Cell & {"dataset": key["dataset"]}),
                                    radius=MetricsParams().fetch_effective(key)["radius"],
                                    voxel_size=spacing / spacing.min())
        self.insert1(dict(key, precision=match.precision, recall=match.recall, f1=match.f1, true_positives=match.tp,
                          false_positives=match.fp, false_negatives=match.fn))


@schema
class DetectionMetrics(CentroidMetrics, dj.Computed):
    """Detected cells matched one-to-one to annotated cells within a radius."""

    detections = CellDetection
    definition = """
    -> CellDetection
    -> MetricsParams
    """ + CentroidMetrics.definition_tail
