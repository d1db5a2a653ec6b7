"""Cell detection on membrane probability maps.

A cell's interior is where the membrane probability is low, so detection runs on
``1 - P(membrane)``: xbrain's greedy sphere detection by default, connected components
(``method='components'``) or multi-scale blob detection that separates touching cells of
mixed sizes (``method='blobs'``), as chosen by :class:`DetectionParams`.  Parameter sets of
``method='learned'`` are taken by :class:`schemas.nuclei.NucleiDetection` instead.
"""

import numpy as np

from neuropipe import blockwise, ops, steps
from neuropipe.database import import_datajoint, insert_in_parts
from neuropipe.io.stored import open_stored
from neuropipe.ops import stitch
from neuropipe.params import ParamSet, fraction, non_negative_int, one_of, positive
from schemas.membrane import MembraneMap
from schemas.volume import DETECTED_CELL_PART, Dataset, VolumeBlocks, cell_rows, centroids

dj = import_datajoint()
schema = dj.Schema()
ON_MEMBRANE_MAPS = ("spheres", "components", "blobs")  # the methods DetectionBlock runs


@schema
class DetectionParams(ParamSet, dj.Lookup):
    """Keyword arguments of :func:`neuropipe.ops.detect_cells`, keyed by their hash."""

    key_name = "detection_id"
    kernel = staticmethod(ops.detect_cells)
    not_params = ("voxel_size", "centres")
    rules = {
        "threshold": (fraction, "a probability in [0, 1]"),
        "stop": (fraction, "a probability in [0, 1]"),
        "sphere_size": (positive, "a positive diameter in voxels"),
        "dilation": (non_negative_int, "a non-negative integer number of voxels"),
        "max_cells": (positive, "a positive integer"),
        "min_voxels": (non_negative_int, "a non-negative integer"),
        "method": one_of(ops.DETECTION_METHODS),
    }

    @classmethod
    def using(cls, methods) -> list[dict]:
        """Return the keys of the sets whose method (the kernel's default where unset) is one of ``methods``."""
        return [{cls.key_name: row[cls.key_name]} for row in cls().to_dicts()
                if cls.effective(row["params"])["method"] in methods]


@schema
class DetectionBlock(blockwise.PerBlock, dj.Computed):
    """Cells found in one block of a membrane map, with the pieces its core holds of each.

    ``components``: the block's core is labelled alone and its pieces (fragments) are joined
    across blocks by :class:`CellDetection`, exactly as labelling the whole volume would; the
    block keeps its faces (first and last planes) apart, for the joining to read.
    ``spheres`` and ``blobs``: the block plus a halo of two cell diameters is searched; a cell
    belongs to the block whose core holds its centroid, and the voxels of every cell found are
    written under an id made from its centroid, so blocks agree on cells they both see.
    """

    grid = VolumeBlocks
    output_dtype = "result"  # components: the core's labels in the block (uint32); otherwise centroid ids (uint64)
    definition = """
    -> VolumeBlocks.Block
    -> MembraneMap
    -> DetectionParams
    ---
    piece_ids : <blob>                    # uint64 ids of the pieces of cells in the core
    first_voxels : <blob>                 # raster index (whole volume) of each piece's first voxel
    voxel_counts : <blob>                 # voxels of each piece
    coordinate_sums : <blob>              # N x 3 ZYX coordinate sums (for centroids)
    probability_sums : <blob>             # interior probability summed over each piece
    owned : <blob>                        # spheres/blobs: N x 5 (id, z, y, x, score) of cells owned
    """ + blockwise.PER_BLOCK_ATTRIBUTES

    @property
    def key_source(self):
        """Every block of every membrane map under every parameter set of a method on membrane maps."""
        return super().key_source & DetectionParams.using(ON_MEMBRANE_MAPS)

    def halo(self, key):
        """None for components (stitched instead); two cell diameters for spheres and blobs."""
        return ops.detection_halo(DetectionParams().fetch_params(key), Dataset.voxel_size(key), super().halo(key))

    def read(self, key, box):
        """Read the membrane probability inside ``box`` (float32, as stored)."""
        membrane = open_stored((MembraneMap & key).fetch1("probability"))
        return np.asarray(membrane[blockwise.slices(box)])

    def compute(self, key, probability, block):
        """Detect, keep the cells whose centroid the core holds, describe the core's pieces (and its faces)."""
        params = DetectionParams().fetch_params(key)
        ids, findings = ops.detect_in_block(probability, read=block.read, core=block.core, linear=block.linear,
                                            volume_shape=block.volume_shape, voxel_size=Dataset.voxel_size(key),
                                            params=params)
        stitched = DetectionParams.effective(params)["method"] == "components"
        faces = stitch.face_pieces(ids, block.core, block.volume_shape, block.block_shape, block_index=block.linear)
        return ids, findings, faces if stitched else []


@schema
class CellDetection(dj.Computed):
    """Cells detected in one membrane map, assembled from its blocks.

    Attributes
    ----------
    labels : zarr array of uint32 (via ``<object@neuropipe>``)
        ZYX, the voxels of cell i labelled i (1..N), chunked by block.
    cell_count : int
    """

    definition = """
    -> MembraneMap
    -> DetectionParams
    ---
    labels : <object@neuropipe>           # uint32 ZYX labels of the detected cells (zarr)
    cell_count : int32
    """

    class Cell(dj.Part):
        """One detected cell."""

        definition = DETECTED_CELL_PART

    @property
    def key_source(self):
        """Detections whose every block is done."""
        return blockwise.complete(super().key_source & DetectionParams.using(ON_MEMBRANE_MAPS), DetectionBlock)

    def make(self, key):
        """Join the blocks' pieces into cells across their faces, number them, write the labels block by block."""
        blocks = (DetectionBlock & key).to_dicts(order_by=blockwise.tables.GRID_COORDINATES)
        params = DetectionParams().fetch_params(key)
        stitched = DetectionParams.effective(params)["method"] == "components"
        provisional = blockwise.open_result(DetectionBlock(), key)
        faces = {name: blockwise.tables.open_pieces(DetectionBlock(), key, name)
                 for name in stitch.face_names(provisional.shape, provisional.chunks)} if stitched else {}
        fragments = stitch.Faces(faces, provisional.shape, provisional.chunks)  # all that stitching reads
        cells = ops.assemble_cells(blocks, fragments, provisional.chunks, voxel_size=Dataset.voxel_size(key),
                                   params=params)
        output = blockwise.open_output(self, key, provisional.shape, "uint32", provisional.chunks, name="labels")
        for linear, (_, core) in enumerate(blockwise.block_grid(provisional.shape, provisional.chunks)):
            region = blockwise.slices(core)
            output[region] = stitch.relabel(np.asarray(provisional[region]), cells["ids"], cells["labels"],
                                            block_index=linear if stitched else None)
        self.insert1(dict(key, labels=blockwise.output_reference(self, key, name="labels"),
                          cell_count=len(cells["centroids"])))
        insert_in_parts(self.Cell, cell_rows(key, cells["centroids"], score=cells["scores"],
                                             voxel_count=cells["voxel_counts"]))


steps.provide("labels", CellDetection)  # what a step's parameters named labels and cells read
steps.provide("cells", CellDetection, lambda key: centroids(CellDetection.Cell & key))
