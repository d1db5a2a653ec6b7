"""Nuclei detected by a network trained on a lab's own annotated cells (the learned option).

Where experts labelled nuclei (an :class:`~schemas.volume.Annotation` of kind ``cells``
meant for training), :class:`NucleiModel` trains a small 3-D U-Net on them
(:func:`neuropipe.ops.train_nuclei`) under each :class:`NucleiTrainingParams` set;
:class:`NucleiDetection` applies every model to every volume and finds one cell per peak
of its centre map (``detect_cells(method='learned')``) under each ``'learned'``
:class:`~schemas.detection.DetectionParams` set, and :class:`NucleiMetrics` scores the
cells against the annotation, as :class:`~schemas.metrics.DetectionMetrics` scores the
unsupervised detections.

Whole volumes are held in memory here (the network is applied tile by tile).
"""

import numpy as np

from neuropipe import ops, steps
from neuropipe.database import import_datajoint, insert_in_parts
from neuropipe.params import ParamSet, positive
from schemas.detection import DetectionParams
from schemas.membrane import TRAINING_RULES, TrainedModels
from schemas.metrics import CentroidScores, MetricsParams, centroid_scores
from schemas.volume import DETECTED_CELL_PART, Annotation, AnnotationVolume, Dataset, Volume, cell_rows, centroids

dj = import_datajoint()
schema = dj.Schema()


@schema
class NucleiTrainingParams(ParamSet, dj.Lookup):
    """Keyword arguments of :func:`neuropipe.ops.train_nuclei`, keyed by their hash."""

    key_name = "nuclei_training_id"
    kernel = staticmethod(ops.train_nuclei)
    not_params = ("voxel_size", "device", "progress", "num_threads")
    rules = {
        **TRAINING_RULES,
        "levels": (positive, "a positive number of poolings"),
        "crop": (positive, "a positive crop side in voxels"),
    }


@schema
class NucleiModel(TrainedModels, dj.Computed):
    """A nuclei U-Net trained on one volume's annotated cells.

    Attributes
    ----------
    model : bytes (via ``<object@neuropipe>``)
        Weights and hyperparameters; ``ops.NucleiModel.from_bytes`` restores it.
    """

    model_class = ops.NucleiModel
    definition = """
    -> AnnotationVolume
    -> NucleiTrainingParams
    """ + TrainedModels.definition_tail

    @property
    def key_source(self):
        """Cell annotations meant for training, under every training parameter set."""
        annotated = Annotation & "purpose = 'train'" & "kind = 'cells'"
        return (AnnotationVolume.proj() & annotated) * NucleiTrainingParams.proj()

    def make(self, key):
        """Train on the volume's annotated cells and store the model."""
        image = np.asarray(Volume.open_image(key))
        cells = np.asarray((AnnotationVolume & key).fetch1("cells"))
        model = ops.train_nuclei(image, cells, voxel_size=Dataset.voxel_size(key),
                                 **NucleiTrainingParams().fetch_params(key))
        self.insert1(dict(key, **model.summary()))


@schema
class NucleiDetection(dj.Computed):
    """Cells a nuclei model finds in one volume.

    Attributes
    ----------
    labels : ndarray of uint32 (via ``<npy@neuropipe>``)
        ZYX, the voxels of cell i labelled i (1..N).
    """

    definition = """
    -> Volume
    -> NucleiModel.proj(training_dataset='dataset')
    -> DetectionParams
    ---
    labels : <npy@neuropipe>              # uint32 ZYX labels of the detected cells
    cell_count : int32
    mean_foreground : float64             # mean predicted nucleus probability
    """

    class Cell(dj.Part):
        """One detected cell; its score is the mean predicted nucleus probability of its voxels."""

        definition = DETECTED_CELL_PART

    @property
    def key_source(self):
        """Every volume under every nuclei model and every 'learned' detection parameter set."""
        return (Volume.proj() * NucleiModel.proj(training_dataset="dataset")
                * (DetectionParams.proj() & DetectionParams.using(("learned",))))

    def make(self, key):
        """Predict the nuclei maps, take one cell per centre peak, store the cells."""
        maps = ops.predict_nuclei(NucleiModel().load(key), np.asarray(Volume.open_image(key)))
        found = ops.detect_cells(maps.foreground, centres=maps.centres, voxel_size=Dataset.voxel_size(key),
                                 **DetectionParams().fetch_params(key))
        self.insert1(dict(key, labels=found.labels, cell_count=found.count,
                          mean_foreground=float(maps.foreground.mean(dtype=np.float64))))
        insert_in_parts(self.Cell, cell_rows(key, found.centroids, score=found.scores, voxel_count=found.voxel_counts))


steps.provide("nuclei", NucleiDetection, lambda key: centroids(NucleiDetection.Cell & key))  # ZYX, (N, 3)


@steps.step(schema, params=MetricsParams)
def nuclei_metrics(nuclei, annotated_cells, voxel_size, *, radius: float = 5.0) -> CentroidScores:
    """Match the learned detections one-to-one to the annotated cells within a radius, and count."""
    return centroid_scores(nuclei, annotated_cells, voxel_size, radius=radius)
