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

from neuropipe import ops
from neuropipe.database import import_datajoint, insert_in_parts
from neuropipe.params import ParamSet, positive
from schemas.detection import DetectionParams
from schemas.membrane import read_bytes
from schemas.metrics import MetricsParams, match_to_annotation
from schemas.volume import Annotation, AnnotationVolume, Dataset, Volume

dj = import_datajoint()
schema = dj.Schema()


@schema
class NucleiTrainingParams(ParamSet, dj.Lookup):
    """Keyword arguments of :func:`neuropipe.ops.train_nuclei`, keyed by their hash."""

    key_name = "nuclei_training_id"
    kernel = staticmethod(ops.train_nuclei)
    not_params = ("voxel_size", "device", "progress", "num_threads")
    rules = {
        "iterations": (positive, "a positive integer"),
        "minutes": (positive, "a positive number of minutes"),
        "width": (positive, "a positive number of channels"),
        "levels": (positive, "a positive number of poolings"),
        "crop": (positive, "a positive crop side in voxels"),
        "batch_size": (positive, "a positive integer"),
        "learning_rate": (positive, "a positive number"),
        "precision": (lambda value: value in ops.PRECISIONS, "one of " + ", ".join(ops.PRECISIONS)),
    }
    definition = """
    nuclei_training_id : char(16)         # content hash of params
    ---
    params : json                         # keyword arguments of ops.train_nuclei
    description = "" : varchar(255)
    """


@schema
class NucleiModel(dj.Computed):
    """A nuclei U-Net trained on one volume's annotated cells.

    Attributes
    ----------
    model : bytes (via ``<object@neuropipe>``)
        Weights and hyperparameters; ``ops.NucleiModel.from_bytes`` restores it.
    """

    definition = """
    -> AnnotationVolume
    -> NucleiTrainingParams
    ---
    model : <object@neuropipe>            # ops.NucleiModel.to_bytes()
    iterations : int32                    # iterations actually run
    train_seconds : float64
    final_loss : float64
    device : varchar(32)                  # where it was trained
    """

    @property
    def key_source(self):
        """Cell annotations meant for training, under every training parameter set."""
        annotated = Annotation & "purpose = 'train'" & "kind = 'cells'"
        return (AnnotationVolume.proj() & annotated) * NucleiTrainingParams.proj()

    def make(self, key):
        """Train on the volume's annotated cells and store the model."""
        image = np.asarray(Volume.open_image(key))
        cells = np.asarray((AnnotationVolume & key).fetch1("cells"))
        model = ops.train_nuclei(image, cells, voxel_size=_voxel_size(key),
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
        """One detected cell."""

        definition = """
        -> master
        cell_id : int32                   # its label in `labels`
        ---
        centroid_z : float64              # voxels
        centroid_y : float64
        centroid_x : float64
        score : float64                   # mean predicted nucleus probability of its voxels
        voxel_count : int64
        """

    @property
    def key_source(self):
        """Every volume under every nuclei model and every 'learned' detection parameter set."""
        return (Volume.proj() * NucleiModel.proj(training_dataset="dataset")
                * (DetectionParams.proj() & DetectionParams.using(("learned",))))

    def make(self, key):
        """Predict the nuclei maps, take one cell per centre peak, store the cells."""
        model = _model(key)
        maps = ops.predict_nuclei(model, np.asarray(Volume.open_image(key)))
        found = ops.detect_cells(maps.foreground, centres=maps.centres, voxel_size=_voxel_size(key),
                                 **DetectionParams().fetch_params(key))
        self.insert1(dict(key, labels=found.labels, cell_count=found.count,
                          mean_foreground=float(maps.foreground.mean(dtype=np.float64))))
        insert_in_parts(self.Cell, (
            dict(key, cell_id=index + 1, centroid_z=z, centroid_y=y, centroid_x=x, score=score, voxel_count=count)
            for index, ((z, y, x), score, count) in enumerate(zip(found.centroids, found.scores,
                                                                  found.voxel_counts))))


@schema
class NucleiMetrics(dj.Computed):
    """Learned detections matched one-to-one to annotated cells within a radius."""

    definition = """
    -> NucleiDetection
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
        """Learned detections in annotated datasets, under every metrics parameter set."""
        return (NucleiDetection.proj() & AnnotationVolume) * MetricsParams.proj()

    def make(self, key):
        """Match detected to annotated centroids and count."""
        self.insert1(dict(key, **match_to_annotation(key, NucleiDetection.Cell & key)))


def _voxel_size(key: dict) -> tuple:
    return tuple((Dataset & key).fetch1("voxel_z_nm", "voxel_y_nm", "voxel_x_nm"))


def _model(key: dict) -> ops.NucleiModel:
    reference = (NucleiModel & {"dataset": key["training_dataset"],
                                "nuclei_training_id": key["nuclei_training_id"]}).fetch1("model")
    return ops.NucleiModel.from_bytes(read_bytes(reference))
