"""Cell detection on membrane probability maps.

A cell's interior is where the membrane probability is low, so detection runs on
``1 - P(membrane)``: xbrain's greedy sphere detection by default, connected components
(``method='components'``) or multi-scale blob detection that separates touching cells of
mixed sizes (``method='blobs'``), as chosen by :class:`DetectionParams`.  Parameter sets of
``method='learned'`` are taken by :class:`schemas.nuclei.NucleiDetection` instead.
"""

import json

import numpy as np

from neuropipe import blockwise, ops
from neuropipe.database import import_datajoint, insert_in_parts
from neuropipe.io.stored import open_stored
from neuropipe.ops import stitch
from neuropipe.ops.components import thick_sections
from neuropipe.params import ParamSet, fraction, non_negative_int, positive
from schemas.membrane import MembraneMap
from schemas.volume import Dataset, VolumeBlocks

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
        "method": (lambda value: value in ops.DETECTION_METHODS, "one of " + ", ".join(ops.DETECTION_METHODS)),
    }
    definition = """
    detection_id : char(16)               # content hash of params
    ---
    params : json                         # keyword arguments of ops.detect_cells
    description = "" : varchar(255)
    """

    @classmethod
    def using(cls, methods) -> list[dict]:
        """Return the keys of the sets whose method (default 'spheres') is one of ``methods``, as a restriction."""
        rows = cls().to_dicts()
        params = [json.loads(row["params"]) if isinstance(row["params"], str) else row["params"] for row in rows]
        return [{cls.key_name: row[cls.key_name]} for row, values in zip(rows, params)
                if values.get("method", "spheres") in methods]


@schema
class DetectionBlock(blockwise.PerBlock, dj.Computed):
    """Cells found in one block of a membrane map, with the pieces its core holds of each.

    ``components``: the block's core is labelled alone and its pieces (fragments) are joined
    across blocks by :class:`CellDetection`, exactly as labelling the whole volume would.
    ``spheres`` and ``blobs``: the block plus a halo of two cell diameters is searched; a cell
    belongs to the block whose core holds its centroid, and the voxels of every cell found are
    written under an id made from its centroid, so blocks agree on cells they both see.
    """

    grid = VolumeBlocks
    output_dtype = "uint64"
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
        params = DetectionParams().fetch_params(key)
        if params.get("method", "spheres") == "components":
            return (0, 0, 0)
        voxel_size = np.asarray(_voxel_size(key), float)
        reach = 2 * (float(params.get("sphere_size", 18)) + float(params.get("dilation", 8)))
        needed = np.ceil(reach * voxel_size.min() / voxel_size).astype(int)
        return tuple(max(int(a), int(b)) for a, b in zip(needed, super().halo(key)))

    def read(self, key, box):
        """Read the membrane probability inside ``box`` (float32, as stored)."""
        membrane = open_stored((MembraneMap & key).fetch1("probability"))
        return np.asarray(membrane[blockwise.slices(box)])

    def compute(self, key, probability, block):
        """Detect, keep the cells whose centroid the core holds, describe the core's pieces."""
        params = DetectionParams().fetch_params(key)
        voxel_size = _voxel_size(key)
        origin = [start for start, _ in block.core]
        core = probability[block.core_in_read]

        def interior(z):  # the interior probability of one plane, as detect_cells computes it
            return 1.0 - core[z].astype(np.float64)

        if params.get("method", "spheres") == "components":
            threshold = params.get("threshold", 0.2)
            mask = np.stack([interior(z) > threshold for z in range(core.shape[0])])
            ids, pieces = stitch.block_fragments(mask, block.linear, connectivity=_connectivity(voxel_size),
                                                 voxel_size=voxel_size, origin=origin,
                                                 volume_shape=block.volume_shape, values=interior,
                                                 dust=int(params.get("min_voxels", 10)))
            return ids, _row(pieces, np.zeros((0, 5)))
        whole_interior = 1.0 - probability.astype(np.float64)
        core = whole_interior[block.core_in_read]
        found = ops.detect_cells(whole_interior, voxel_size=voxel_size, **params)
        read_origin = np.array([start for start, _ in block.read], float)
        centroids = np.asarray(found.centroids, float).reshape(-1, 3) + read_origin
        ids = stitch.centroid_ids(centroids, block.volume_shape)
        lookup = np.concatenate([[0], ids]).astype(np.uint64)
        core_ids = lookup[found.labels[block.core_in_read]]
        mine = np.array([blockwise.grid.contains(block.core, centroid) for centroid in centroids], bool)
        owned = np.column_stack([ids[mine].astype(np.float64), centroids[mine],
                                 np.asarray(found.scores, float)[mine]]) if mine.any() else np.zeros((0, 5))
        return core_ids, _row(stitch.pieces(core_ids, core, origin=origin, volume_shape=block.volume_shape),
                              owned)


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

        definition = """
        -> master
        cell_id : int32                   # its label in `labels`
        ---
        centroid_z : float64              # voxels
        centroid_y : float64
        centroid_x : float64
        score : float64                   # detector confidence
        voxel_count : int64
        """

    @property
    def key_source(self):
        """Detections whose every block is done."""
        return blockwise.complete(super().key_source & DetectionParams.using(ON_MEMBRANE_MAPS), DetectionBlock)

    def make(self, key):
        """Join the blocks' pieces into cells, number them, write the labels block by block."""
        params = DetectionParams().fetch_params(key)
        blocks = (DetectionBlock & key).to_dicts(order_by=blockwise.tables.GRID_COORDINATES)
        pieces = {name: np.concatenate([np.asarray(block[name]).reshape(-1, *shape) for block in blocks])
                  for name, shape in (("piece_ids", ()), ("first_voxels", ()), ("voxel_counts", ()),
                                      ("coordinate_sums", (3,)), ("probability_sums", ()))}
        provisional = blockwise.open_result(DetectionBlock(), key)
        if params.get("method", "spheres") == "components":
            cells = _stitched_cells(key, pieces, provisional, params)
        else:
            owned = np.concatenate([np.asarray(block["owned"]).reshape(-1, 5) for block in blocks])
            cells = _owned_cells(owned, pieces, int(params.get("max_cells", 500)))
        output = blockwise.open_output(self, key, provisional.shape, "uint32", provisional.chunks, name="labels")
        for _, core in blockwise.block_grid(provisional.shape, provisional.chunks):
            region = blockwise.slices(core)
            output[region] = stitch.relabel(np.asarray(provisional[region]), cells["ids"], cells["labels"])
        self.insert1(dict(key, labels=blockwise.output_reference(self, key, name="labels"),
                          cell_count=len(cells["centroids"])))
        insert_in_parts(self.Cell, (
            dict(key, cell_id=index + 1, centroid_z=z, centroid_y=y, centroid_x=x, score=score, voxel_count=count)
            for index, ((z, y, x), score, count) in enumerate(zip(cells["centroids"], cells["scores"],
                                                                  cells["voxel_counts"]))))


def _row(pieces: dict, owned: np.ndarray) -> dict:
    return dict(piece_ids=pieces["ids"], first_voxels=pieces["first_voxels"], voxel_counts=pieces["voxel_counts"],
                coordinate_sums=pieces["coordinate_sums"], probability_sums=pieces["value_sums"], owned=owned)


def _stitched_cells(key: dict, pieces: dict, provisional, params: dict) -> dict:
    """Join fragments across block faces (union-find) and number them as whole-volume labelling would."""
    voxel_size = _voxel_size(key)
    planar = thick_sections(voxel_size)

    def read_plane(axis, index, box):
        box = list(box)
        box.insert(axis, (index, index + 1))
        return np.take(blockwise.grid.read_chunkwise(provisional, box), 0, axis=axis)

    pairs = stitch.stitch_pairs(read_plane, provisional.shape, provisional.chunks, _connectivity(voxel_size),
                                    planar)
    ids = pieces["piece_ids"].astype(np.uint64)
    roots = stitch.merge_fragments(ids, pairs)
    labels, kept = stitch.number_components(roots, pieces["first_voxels"], pieces["voxel_counts"],
                                                dust=int(params.get("min_voxels", 10)),
                                                max_count=int(params.get("max_cells", 500)))
    counts = np.bincount(labels, weights=pieces["voxel_counts"], minlength=len(kept) + 1)[1:]
    sums = np.stack([np.bincount(labels, weights=pieces["coordinate_sums"][:, axis], minlength=len(kept) + 1)[1:]
                     for axis in range(3)], axis=1)
    scores = np.bincount(labels, weights=pieces["probability_sums"], minlength=len(kept) + 1)[1:]
    return dict(ids=ids, labels=labels, centroids=sums / counts[:, None], scores=scores / counts,
                voxel_counts=counts.astype(np.int64))


def _owned_cells(owned: np.ndarray, pieces: dict, max_cells: int) -> dict:
    """Label the cells their blocks own, strongest first; count their voxels over all blocks."""
    order = np.lexsort((owned[:, 0], -owned[:, 4]))[:max_cells] if len(owned) else np.zeros(0, int)
    owned = owned[order]
    ids = owned[:, 0].astype(np.uint64)
    labels = np.arange(1, len(ids) + 1, dtype=np.uint32)
    piece_labels = stitch.relabel(pieces["piece_ids"].astype(np.uint64), ids, labels)
    counts = np.bincount(piece_labels, weights=pieces["voxel_counts"], minlength=len(ids) + 1)[1:]
    return dict(ids=ids, labels=labels, centroids=owned[:, 1:4], scores=owned[:, 4],
                voxel_counts=counts.astype(np.int64))


def _voxel_size(key: dict) -> tuple:
    return tuple((Dataset & key).fetch1("voxel_z_nm", "voxel_y_nm", "voxel_x_nm"))


def _connectivity(voxel_size) -> int:
    """Return the connectivity ``ops.detect_cells(method='components')`` uses: 26, or 6 for anisotropic voxels."""
    return 6 if len(set(voxel_size)) > 1 else 26
