"""Cell detection on a membrane map block by block, and the volume's cells assembled from the blocks.

Detection runs on ``1 - P(membrane)``, the probability of a cell's interior.  How a block's
findings become the volume's cells depends on the method:

- ``components``: each block labels its core alone and describes its pieces (fragments,
  :func:`~neuropipe.ops.stitch.block_fragments`); :func:`stitched_cells` joins them across
  the block faces and numbers them exactly as labelling the whole volume would.
- ``spheres`` and ``blobs``: each block is searched with a halo of two cell diameters
  (:func:`detection_halo`); a cell belongs to the block whose core holds its centroid, and
  the voxels of every cell a block finds are written under an id made from its centroid
  (:func:`~neuropipe.ops.stitch.centroid_ids`), so blocks agree on the cells they both see;
  :func:`owned_cells` numbers the owned cells, strongest first.

A block's findings (:func:`detect_in_block`) are a dict of arrays: per piece of a cell its
core holds, ``piece_ids``, ``first_voxels`` (raster index in the volume), ``voxel_counts``,
``coordinate_sums`` (N x 3, ZYX) and ``probability_sums`` (interior probability), and
``owned`` (M x 5: id, z, y, x, score of each cell whose centroid its core holds).  The
``params`` of these functions are keyword arguments of :func:`~neuropipe.ops.detect_cells`;
those a set leaves out take its defaults (:data:`~neuropipe.ops.detect.DETECTION_DEFAULTS`).
:func:`detect_blockwise` runs the whole chain in memory: the reference of what the tables
``DetectionBlock`` and ``CellDetection`` do through the store.
"""

from __future__ import annotations

import numpy as np

from . import stitch
from ._validate import check_voxel_size
from .components import thick_sections
from .detect import DETECTION_DEFAULTS, components_connectivity, detect_cells
from .grid import block_grid, contains, grow, paste, slices

__all__ = ["assemble_cells", "detect_blockwise", "detect_in_block", "detection_halo", "owned_cells", "stitched_cells"]

PIECE_SHAPES = {"piece_ids": (), "first_voxels": (), "voxel_counts": (), "coordinate_sums": (3,),
                "probability_sums": ()}  # the per-piece findings of a block, and each row's shape


def detection_halo(params: dict, voxel_size, least=(0, 0, 0)) -> tuple:
    """Return the ZYX halo a block is read with: none for components, two cell diameters otherwise.

    Parameters
    ----------
    params : dict
        Keyword arguments of :func:`~neuropipe.ops.detect_cells` (``method``, ``sphere_size``
        and ``dilation`` matter).
    voxel_size : sequence of 3 float
        Physical (z, y, x) voxel size; the reach is ``2 * (sphere_size + dilation)`` voxels of
        the finest axis.
    least : tuple of int, optional
        The least halo (the block shape's); spheres and blobs read at least this much.

    Returns
    -------
    tuple of int

    Examples
    --------
    >>> detection_halo({"sphere_size": 4, "dilation": 1}, (40, 4, 4), least=(0, 12, 0))
    (1, 12, 10)
    >>> detection_halo({"method": "components"}, (1, 1, 1), least=(5, 5, 5))
    (0, 0, 0)
    """
    params = {**DETECTION_DEFAULTS, **params}
    if params["method"] == "components":
        return (0, 0, 0)
    voxel_size = np.asarray(check_voxel_size(voxel_size), float)
    reach = 2 * (float(params["sphere_size"]) + float(params["dilation"]))
    needed = np.ceil(reach * voxel_size.min() / voxel_size).astype(int)
    return tuple(max(int(a), int(b)) for a, b in zip(needed, least))


def detect_in_block(membrane: np.ndarray, *, read, core, linear: int, volume_shape, voxel_size,
                    params: dict) -> tuple[np.ndarray, dict]:
    """Detect the cells of one block of a membrane map; describe the pieces of cells its core holds.

    Parameters
    ----------
    membrane : ndarray of shape (Z, Y, X), float
        Membrane probability inside ``read``.
    read, core : tuple of (int, int)
        The block's read box (its core grown by :func:`detection_halo`, clipped to the
        volume) and core, ZYX volume voxels, half-open.
    linear : int
        The block's index in C order over its grid (makes its fragment ids unique).
    volume_shape : tuple of int
        The whole volume's ZYX extent.
    voxel_size : sequence of 3 float
        Physical (z, y, x) voxel size.
    params : dict
        Keyword arguments of :func:`~neuropipe.ops.detect_cells`; ``method`` one of
        ``spheres``, ``components``, ``blobs``.

    Returns
    -------
    ids : ndarray, the core's shape
        The core's piece ids (0 = none): its labels in the block (uint32, components; the
        pieces are named by :func:`~neuropipe.ops.stitch.fragment_ids` of them) or centroid
        ids (uint64).
    findings : dict
        As the module describes; ``owned`` is empty for components.
    """
    params = {**DETECTION_DEFAULTS, **params}
    voxel_size = check_voxel_size(voxel_size)
    origin = [start for start, _ in core]
    inside = slices(core, read)
    if params["method"] == "components":
        membrane = membrane[inside]

        def interior(z):  # the interior probability of one plane, as detect_cells computes it
            return 1.0 - membrane[z].astype(np.float64)

        mask = np.stack([interior(z) > params["threshold"] for z in range(membrane.shape[0])])
        ids, pieces = stitch.block_fragments(mask, linear, connectivity=components_connectivity(voxel_size),
                                             voxel_size=voxel_size, origin=origin, volume_shape=volume_shape,
                                             values=interior, dust=int(params["min_voxels"]))
        return ids, _findings(pieces, np.zeros((0, 5)))
    interior = 1.0 - membrane.astype(np.float64)
    found = detect_cells(interior, voxel_size=voxel_size, **params)
    centroids = np.asarray(found.centroids, float).reshape(-1, 3) + np.array([start for start, _ in read], float)
    ids = stitch.centroid_ids(centroids, volume_shape)
    core_ids = np.concatenate([[0], ids]).astype(np.uint64)[found.labels[inside]]
    mine = np.array([contains(core, centroid) for centroid in centroids], bool)
    owned = np.column_stack([ids[mine].astype(np.float64), centroids[mine],
                             np.asarray(found.scores, float)[mine]]) if mine.any() else np.zeros((0, 5))
    return core_ids, _findings(stitch.pieces(core_ids, interior[inside], origin=origin, volume_shape=volume_shape),
                               owned)


def _findings(pieces: dict, owned: np.ndarray) -> dict:
    """Name the columns of :func:`~neuropipe.ops.stitch.pieces` as a block's findings, with its owned cells."""
    return dict(piece_ids=pieces["ids"], first_voxels=pieces["first_voxels"], voxel_counts=pieces["voxel_counts"],
                coordinate_sums=pieces["coordinate_sums"], probability_sums=pieces["value_sums"], owned=owned)


def assemble_cells(blocks, fragments, block, *, voxel_size, params: dict) -> dict:
    """Return the cells of a volume, numbered, from the findings of all its blocks.

    Parameters
    ----------
    blocks : sequence of dict
        The findings of every block (:func:`detect_in_block`), in a fixed order (the grid's);
        arrays may come flat, as a table stores them.
    fragments : array_like of uint64, or stitch.Faces
        The piece ids every block wrote into its core (the whole volume; a zarr array is read
        one block face at a time), or the block faces alone (all that stitching reads).
    block : tuple of int
        The block shape.
    voxel_size : sequence of 3 float
        Physical (z, y, x) voxel size.
    params : dict
        Keyword arguments of :func:`~neuropipe.ops.detect_cells` the blocks were detected with.

    Returns
    -------
    dict
        ``ids`` and ``labels``: piece ids and their labels (``stitch.relabel(fragments, ids,
        labels)`` labels the volume; 0 where dropped); per cell, in label order,
        ``centroids`` (N x 3, ZYX voxels), ``scores`` and ``voxel_counts``.
    """
    params = {**DETECTION_DEFAULTS, **params}
    pieces = {name: np.concatenate([np.asarray(found[name]).reshape(-1, *shape) for found in blocks])
              for name, shape in PIECE_SHAPES.items()}
    if params["method"] == "components":
        return stitched_cells(pieces, fragments, block, voxel_size=voxel_size, min_voxels=int(params["min_voxels"]),
                              max_cells=int(params["max_cells"]))
    owned = np.concatenate([np.asarray(found["owned"]).reshape(-1, 5) for found in blocks])
    return owned_cells(owned, pieces, max_cells=int(params["max_cells"]))


def stitched_cells(pieces: dict, fragments, block, *, voxel_size, min_voxels: int, max_cells: int) -> dict:
    """Join fragments across block faces (union-find) and number them as whole-volume labelling would.

    Parameters
    ----------
    pieces : dict
        The per-piece findings of all blocks, concatenated (:data:`PIECE_SHAPES`).
    fragments, block, voxel_size
        As for :func:`assemble_cells`.
    min_voxels : int
        Components with fewer voxels are dropped.
    max_cells : int
        At most this many of the largest are kept.

    Returns
    -------
    dict
        As :func:`assemble_cells` returns; ``ids`` are every fragment's.
    """
    voxel_size = check_voxel_size(voxel_size)
    pairs = stitch.stitch_pairs(stitch.plane_reader(fragments), fragments.shape, block,
                                components_connectivity(voxel_size), thick_sections(voxel_size))
    ids = pieces["piece_ids"].astype(np.uint64)
    roots = stitch.merge_fragments(ids, pairs)
    labels, kept = stitch.number_components(roots, pieces["first_voxels"], pieces["voxel_counts"], dust=min_voxels,
                                            max_count=max_cells)
    counts = _per_label(labels, pieces["voxel_counts"], len(kept))
    sums = np.stack([_per_label(labels, pieces["coordinate_sums"][:, axis], len(kept)) for axis in range(3)], axis=1)
    scores = _per_label(labels, pieces["probability_sums"], len(kept))
    return dict(ids=ids, labels=labels, centroids=sums / counts[:, None], scores=scores / counts,
                voxel_counts=counts.astype(np.int64))


def owned_cells(owned: np.ndarray, pieces: dict, *, max_cells: int) -> dict:
    """Label the cells their blocks own, strongest first; count their voxels over all blocks.

    Parameters
    ----------
    owned : ndarray of shape (M, 5)
        ``(id, z, y, x, score)`` of every cell a block owns (each cell owned by one block).
    pieces : dict
        The per-piece findings of all blocks, concatenated (:data:`PIECE_SHAPES`).
    max_cells : int
        At most this many of the highest scores are kept (ties: the smaller id first).

    Returns
    -------
    dict
        As :func:`assemble_cells` returns; ``ids`` are the kept cells', labelled 1..N.
    """
    order = np.lexsort((owned[:, 0], -owned[:, 4]))[:max_cells] if len(owned) else np.zeros(0, int)
    owned = owned[order]
    ids = owned[:, 0].astype(np.uint64)
    labels = np.arange(1, len(ids) + 1, dtype=np.uint32)
    piece_labels = stitch.relabel(pieces["piece_ids"].astype(np.uint64), ids, labels)
    counts = _per_label(piece_labels, pieces["voxel_counts"], len(ids))
    return dict(ids=ids, labels=labels, centroids=owned[:, 1:4], scores=owned[:, 4],
                voxel_counts=counts.astype(np.int64))


def _per_label(labels: np.ndarray, weights: np.ndarray, count: int) -> np.ndarray:
    """Sum ``weights`` per label 1..count (label 0 left out)."""
    return np.bincount(labels, weights=weights, minlength=count + 1)[1:]


def detect_blockwise(membrane: np.ndarray, block, *, voxel_size=None, least_halo=(0, 0, 0),
                     **params) -> tuple[np.ndarray, dict]:
    """Detect cells in a membrane map block by block and assemble them, in memory.

    The reference of what the tables ``DetectionBlock`` and ``CellDetection`` do through the
    store; used to test them and to benchmark.

    Parameters
    ----------
    membrane : ndarray of shape (Z, Y, X), float
        Membrane probability of the whole volume.
    block : tuple of int
        Block shape, ZYX.
    voxel_size : sequence of 3 float, optional
        Physical (z, y, x) voxel size; ``None`` means isotropic.
    least_halo : tuple of int, optional
        The block shape's halo (see :func:`detection_halo`).
    **params
        Keyword arguments of :func:`~neuropipe.ops.detect_cells`.

    Returns
    -------
    labels : ndarray of uint32
        ZYX, the voxels of cell ``i`` labelled ``i`` (1..N).
    cells : dict
        As :func:`assemble_cells` returns.

    Examples
    --------
    >>> membrane = np.ones((4, 12, 12)); membrane[:, 2:5, 2:10] = 0.0
    >>> labels, cells = detect_blockwise(membrane, (4, 6, 6), method="components", min_voxels=1)
    >>> int(labels.max()), cells["voxel_counts"].tolist()
    (1, [96])
    """
    voxel_size = check_voxel_size(voxel_size)
    shape = membrane.shape
    halo = detection_halo(params, voxel_size, least_halo)
    stitched = {**DETECTION_DEFAULTS, **params}["method"] == "components"
    faces, findings, pieces = {}, [], []
    for linear, (_, core) in enumerate(block_grid(shape, block)):
        read = grow(core, halo, shape)
        ids, found = detect_in_block(membrane[slices(read)], read=read, core=core, linear=linear, volume_shape=shape,
                                     voxel_size=voxel_size, params=params)
        paste(faces, stitch.face_pieces(ids, core, shape, block, block_index=linear) if stitched else [])
        findings.append(found)
        pieces.append((core, ids))
    cells = assemble_cells(findings, stitch.Faces(faces, shape, block), block, voxel_size=voxel_size, params=params)
    labels = np.zeros(shape, np.uint32)
    for linear, (core, ids) in enumerate(pieces):
        labels[slices(core)] = stitch.relabel(ids, cells["ids"], cells["labels"],
                                              block_index=linear if stitched else None)
    return labels, cells
