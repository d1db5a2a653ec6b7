"""Membrane probability maps: a 2D U-Net trained on annotated slices, then applied block by block.

:class:`MembraneModel` trains one model per training annotation and
:class:`TrainingParams` set; :class:`MembraneBlock` applies every model to every block of
every volume under each :class:`InferenceParams` set, and :class:`MembraneMap` records the map
once all its blocks are done.  Restrict ``populate`` (or delete rows) where a
lab wants fewer combinations.
"""

import numpy as np

from neuropipe import blockwise, ops, steps
from neuropipe.database import import_datajoint
from neuropipe.ops import unet
from neuropipe.params import ParamSet, fraction, non_negative, non_negative_int, one_of, positive
from schemas.volume import Annotation, AnnotationVolume, Volume, VolumeBlocks

dj = import_datajoint()
schema = dj.Schema()
TRAINING_RULES = {  # what every training kernel takes alike (train_membrane, train_nuclei): budget and optimiser
    "iterations": (positive, "a positive integer"),
    "minutes": (positive, "a positive number of minutes"),
    "width": (positive, "a positive number of channels"),
    "batch_size": (positive, "a positive integer"),
    "learning_rate": (positive, "a positive number"),
    "precision": one_of(ops.PRECISIONS),
}


@schema
class TrainingParams(ParamSet, dj.Lookup):
    """Keyword arguments of :func:`neuropipe.ops.train_membrane`, keyed by their hash."""

    key_name = "training_id"
    kernel = staticmethod(ops.train_membrane)
    not_params = ("device", "progress", "num_threads")
    rules = {
        **TRAINING_RULES,
        "depth": (positive, "a positive number of levels"),
        "crop": (positive, "a positive crop size in pixels"),
        "balance": (fraction, "a number in [0, 1]"),
        "validation": (non_negative_int, "a non-negative number of slices"),
        "schedule": one_of(ops.SCHEDULES),
        "warp": (non_negative, "a non-negative number"),
        "average": (lambda value: isinstance(value, (int, float)) and 0 <= value < 1, "a number in [0, 1)"),
        "warmup": (lambda value: isinstance(value, (int, float)) and 0 <= value < 0.5, "a fraction in [0, 0.5)"),
        "context": (non_negative_int, "a non-negative number of slices"),
        "normalise": one_of(ops.NORMALISATIONS),
    }


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
        "precision": one_of(ops.PRECISIONS),
    }


class TrainedModels:
    """Mixin for a table of models trained on annotated volumes (membrane and nuclei U-Nets).

    ``model_class`` is the ops class whose ``from_bytes`` restores a stored model;
    :meth:`load` returns the model a downstream key names, loaded once per stored version.
    """

    model_class = None
    definition_tail = """
    ---
    model : <object@neuropipe>            # model_class.to_bytes()
    iterations : int32                    # iterations actually run
    train_seconds : float64
    final_loss : float64
    device : varchar(32)                  # where it was trained
    """

    def load(self, key: dict):
        """Return the model a downstream ``key`` names: its ``training_dataset`` and training parameter set.

        Loaded models are kept by their path in the store, which every write makes anew, so a
        model deleted and trained again is loaded again by a long-running worker.
        """
        training = {name: key[name] for name in self.primary_key if name != "dataset"}
        reference = (self & dict(training, dataset=key["training_dataset"])).fetch1("model")
        path = getattr(reference, "path", None)
        if path is None:
            return self.model_class.from_bytes(read_bytes(reference))
        if path not in _LOADED_MODELS:
            if len(_LOADED_MODELS) >= 4:
                _LOADED_MODELS.pop(next(iter(_LOADED_MODELS)))
            _LOADED_MODELS[path] = self.model_class.from_bytes(read_bytes(reference))
        return _LOADED_MODELS[path]


_LOADED_MODELS: dict = {}  # stored object path -> model: each block of a map needs the same one


def read_bytes(reference) -> bytes:
    """Return the content of an ``<object>`` attribute as bytes."""
    if isinstance(reference, (bytes, bytearray)):
        return bytes(reference)
    return reference.read()


@schema
class MembraneModel(TrainedModels, dj.Computed):
    """A membrane U-Net trained on one annotated training volume.

    Attributes
    ----------
    model : bytes (via ``<object@neuropipe>``)
        Weights and hyperparameters; ``ops.MembraneModel.from_bytes`` restores it.
    final_loss : float
        Training loss over the last iterations.
    """

    model_class = ops.MembraneModel
    definition = """
    -> AnnotationVolume
    -> TrainingParams
    """ + TrainedModels.definition_tail

    @property
    def key_source(self):
        """Annotations meant for training, under every training parameter set."""
        return (AnnotationVolume.proj() & (Annotation & "purpose = 'train'")) * TrainingParams.proj()

    def make(self, key):
        """Train on the annotated volume and store the model."""
        image = np.asarray(Volume.open_image(key))
        membrane = np.asarray((AnnotationVolume & key).fetch1("membrane"))
        model = ops.train_membrane(image, membrane, **TrainingParams().fetch_params(key))
        self.insert1(dict(key, **model.summary()))


@schema
class MembraneBlock(blockwise.PerBlock, dj.Computed):
    """The membrane probability of one block of a volume, written into its map's zarr array.

    Tiles are placed as on the whole slices, and each block computes those that start in it
    (:class:`neuropipe.ops.unet.MembraneTiling`), reading what they cover and the model's
    context slices; each slice is normalised by the whole slice's statistics.  Where a tile
    reaches into the next block, the pixels there (the block's *seams*, NaN until then) are
    blended by :class:`MembraneMap` from the sums both blocks keep, so the map equals the
    whole-volume prediction and no tile is computed twice.
    """

    grid = VolumeBlocks
    output_dtype = "float32"
    definition = """
    -> VolumeBlocks.Block
    -> MembraneModel.proj(training_dataset='dataset')
    -> InferenceParams
    ---
    probability_sum : float64             # over the block's core, for the map's mean
    """ + blockwise.PER_BLOCK_ATTRIBUTES

    def tiling(self, key, context: int = 0) -> unet.MembraneTiling:
        """Return how the tiles of the whole slices fall on the blocks of ``key``'s map."""
        params = InferenceParams().fetch_effective(key)
        shape = tuple(int(v) for v in (VolumeBlocks & key).fetch1("depth", "height", "width"))
        return unet.MembraneTiling(shape, VolumeBlocks().block_shape(key), tile=int(params["tile"]),
                                   overlap=int(params["overlap"]), context=context)

    def read_box(self, key, core, volume_shape):
        """Return the box the block reads: its tiles, the model's context slices and the least halo."""
        needed = self.tiling(key, MembraneModel().load(key).context).read_box(core)
        least = super().read_box(key, core, volume_shape)
        return tuple((min(a, c), max(b, d)) for (a, b), (c, d) in zip(needed, least))

    def read(self, key, box):
        """Read the image inside ``box``."""
        return np.asarray(Volume.open_image(key)[blockwise.slices(box)])

    def compute(self, key, image, block):
        """Predict the tiles that start in the block, as the whole volume would; keep the seams' sums."""
        (z0, z1) = block.read[0]
        means, stds = (Volume & key).fetch1("slice_mean", "slice_std")
        probability, seams = unet.predict_membrane_block(
            MembraneModel().load(key), image, read=block.read, core=block.core, volume_shape=block.volume_shape,
            block_shape=block.block_shape, slice_stats=(means[z0:z1], stds[z0:z1]),
            **InferenceParams().fetch_params(key))
        return probability, {"probability_sum": float(np.nansum(probability, dtype=np.float64))}, seams

    def fill_seams(self, key) -> float:
        """Blend the seams of ``key``'s map from the sums its blocks kept; return the probability summed over them."""
        tiling = self.tiling(key)
        cores = [core for _, core in blockwise.block_grid(tiling.shape, tiling.block) if tiling.has_seams(core)]
        if not cores:
            return 0.0
        probability = blockwise.open_output(self, key, tiling.shape, self.output_dtype, tiling.block)
        seams = {name: blockwise.tables.open_pieces(self, key, name)
                 for name, band in zip(unet.MembraneTiling.PIECES, tiling.bands) if band}
        filled = 0.0
        for core in cores:
            values = np.asarray(probability[blockwise.slices(core)])
            filled += tiling.fill(values, core, lambda name, box: np.asarray(seams[name][blockwise.slices(box)]))
            probability[blockwise.slices(core)] = values
        return filled


@schema
class MembraneMap(dj.Computed):
    """Membrane probability of every voxel of a volume, from one model, assembled from its blocks.

    Attributes
    ----------
    probability : zarr array of float32 (via ``<object@neuropipe>``)
        ZYX, in [0, 1], chunked by block; ``neuropipe.io.stored.open_stored`` opens it.
    """

    definition = """
    -> VolumeBlocks
    -> MembraneModel.proj(training_dataset='dataset')
    -> InferenceParams
    ---
    probability : <object@neuropipe>      # float32 ZYX membrane probability (zarr)
    mean_probability : float64
    """

    @property
    def key_source(self):
        """Maps whose every block is done."""
        return blockwise.complete(super().key_source, MembraneBlock)

    def make(self, key):
        """Blend the seams between the blocks, record the map."""
        total = (MembraneBlock & key).to_arrays("probability_sum").sum() + MembraneBlock().fill_seams(key)
        voxels = np.prod((VolumeBlocks & key).fetch1("depth", "height", "width"), dtype=np.float64)
        self.insert1(dict(key, probability=blockwise.output_reference(MembraneBlock(), key),
                          mean_probability=float(total / voxels)))


steps.provide("probability", MembraneMap)  # what a step's parameter named probability reads
