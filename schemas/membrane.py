"""Membrane probability maps: a 2D U-Net trained on annotated slices, then applied.

:class:`MembraneModel` trains one model per training annotation and
:class:`TrainingParams` set; :class:`MembraneMap` applies every model to every volume
under each :class:`InferenceParams` set.  Restrict ``populate`` (or delete rows) where a
lab wants fewer combinations.
"""

import numpy as np

from neuropipe import ops
from neuropipe.database import import_datajoint
from neuropipe.params import ParamSet, fraction, non_negative, non_negative_int, positive
from schemas.volume import Annotation, AnnotationVolume, Volume

dj = import_datajoint()
schema = dj.Schema()


@schema
class TrainingParams(ParamSet, dj.Lookup):
    """Keyword arguments of :func:`neuropipe.ops.train_membrane`, keyed by their hash."""

    key_name = "training_id"
    kernel = staticmethod(ops.train_membrane)
    not_params = ("device", "progress", "num_threads")
    rules = {
        "iterations": (positive, "a positive integer"),
        "minutes": (positive, "a positive number of minutes"),
        "width": (positive, "a positive number of channels"),
        "depth": (positive, "a positive number of levels"),
        "crop": (positive, "a positive crop size in pixels"),
        "batch_size": (positive, "a positive integer"),
        "learning_rate": (positive, "a positive number"),
        "balance": (fraction, "a number in [0, 1]"),
        "validation": (non_negative_int, "a non-negative number of slices"),
        "schedule": (lambda value: value in ops.SCHEDULES, "one of " + ", ".join(ops.SCHEDULES)),
        "precision": (lambda value: value in ops.PRECISIONS, "one of " + ", ".join(ops.PRECISIONS)),
        "warp": (non_negative, "a non-negative number"),
        "average": (lambda value: isinstance(value, (int, float)) and 0 <= value < 1, "a number in [0, 1)"),
        "context": (non_negative_int, "a non-negative number of slices"),
        "normalise": (lambda value: value in ops.NORMALISATIONS, "one of " + ", ".join(ops.NORMALISATIONS)),
    }
    definition = """
    training_id : char(16)                # content hash of params
    ---
    params : json                         # keyword arguments of ops.train_membrane
    description = "" : varchar(255)
    """


@schema
class InferenceParams(ParamSet, dj.Lookup):
    """Keyword arguments of :func:`neuropipe.ops.predict_membrane`, keyed by their hash."""

    key_name = "inference_id"
    kernel = staticmethod(ops.predict_membrane)
    not_params = ("device",)
    rules = {
        "tile": (positive, "a positive tile size in pixels"),
        "overlap": (non_negative_int, "a non-negative integer"),
        "batch_size": (positive, "a positive integer"),
        "augment": (lambda value: isinstance(value, bool), "true or false"),
        "precision": (lambda value: value in ops.PRECISIONS, "one of " + ", ".join(ops.PRECISIONS)),
    }
    definition = """
    inference_id : char(16)               # content hash of params
    ---
    params : json                         # keyword arguments of ops.predict_membrane
    description = "" : varchar(255)
    """


@schema
class MembraneModel(dj.Computed):
    """A membrane U-Net trained on one annotated training volume.

    Attributes
    ----------
    model : bytes (via ``<object@neuropipe>``)
        Weights and hyperparameters; ``ops.MembraneModel.from_bytes`` restores it.
    final_loss : float
        Training loss over the last iterations.
    """

    definition = """
    -> AnnotationVolume
    -> TrainingParams
    ---
    model : <object@neuropipe>            # ops.MembraneModel.to_bytes()
    iterations : int32                    # iterations actually run
    train_seconds : float64
    final_loss : float64
    device : varchar(32)                  # where it was trained
    """

    @property
    def key_source(self):
        """Annotations meant for training, under every training parameter set."""
        return (AnnotationVolume.proj() & (Annotation & "purpose = 'train'")) * TrainingParams.proj()

    def make(self, key):
        """Train on the annotated volume and store the model."""
        image = np.asarray(Volume.open_image(key))
        membrane = np.asarray((AnnotationVolume & key).fetch1("membrane"))
        model = ops.train_membrane(image, membrane, **TrainingParams().fetch_params(key))
        self.insert1(dict(key, model=model.to_bytes(), iterations=model.iterations,
                          train_seconds=model.train_seconds, final_loss=model.final_loss,
                          device=str(model.device)))


@schema
class MembraneMap(dj.Computed):
    """Membrane probability of every voxel of a volume, from one model.

    Attributes
    ----------
    probability : ndarray of float32 (via ``<npy@neuropipe>``)
        ZYX, in [0, 1].
    """

    definition = """
    -> Volume
    -> MembraneModel.proj(training_dataset='dataset')
    -> InferenceParams
    ---
    probability : <npy@neuropipe>         # float32 ZYX membrane probability
    mean_probability : float64
    """

    def make(self, key):
        """Predict the membrane probability of the volume with the model."""
        image = np.asarray(Volume.open_image(key))
        model_key = dict(key, dataset=key["training_dataset"])
        model = ops.MembraneModel.from_bytes(_read_bytes((MembraneModel & model_key).fetch1("model")))
        probability = ops.predict_membrane(model, image, **InferenceParams().fetch_params(key))
        self.insert1(dict(key, probability=probability, mean_probability=float(probability.mean())))


def _read_bytes(reference) -> bytes:
    """Return the content of an ``<object>`` attribute as bytes."""
    if isinstance(reference, (bytes, bytearray)):
        return bytes(reference)
    return reference.read()
