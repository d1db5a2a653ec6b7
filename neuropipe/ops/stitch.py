"""Connected components of a volume labelled block by block, stitched into global components.

Each block labels its own core with :func:`~neuropipe.ops.label_components` and names its
pieces (*fragments*) by globally unique ids (:func:`fragment_ids`).  Two fragments of
different blocks belong to one component where voxels of theirs touch across a block
boundary: :func:`boundary_pairs` finds those pairs in the two planes on either side of each
boundary, :func:`merge_fragments` joins them with union-find, and the result, numbered in the
raster order of each component's first voxel, is what labelling the whole volume at once gives.
Those planes are all that stitching reads: a block keeps the first and last plane of its core
along each axis (:func:`face_pieces`), and :class:`Faces` reads them back.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .components import label_components, thick_sections
from .grid import Piece, block_grid, grid_shape, paste, read_chunkwise, slices

BLOCK_ID_SHIFT = 32  # a fragment id is (linear block index + 1) << 32 | its label in the block


def fragment_ids(labels: np.ndarray, block_index: int) -> np.ndarray:
    """Return a block's labels (uint32, 0 = background) as globally unique uint64 fragment ids."""
    out = labels.astype(np.uint64)
    np.bitwise_or(out, np.uint64(block_index + 1) << np.uint64(BLOCK_ID_SHIFT), out=out, where=labels > 0)
    return out


def centroid_ids(centroids: np.ndarray, volume_shape) -> np.ndarray:
    """Name cells by their centroid: 1 + the raster index of its nearest voxel (uint64).

    Blocks that find the same cell near their common face find the same centroid, so they
    write its voxels under the same id without talking to each other.
    """
    voxels = np.clip(np.rint(np.asarray(centroids, float).reshape(-1, 3)).astype(np.int64), 0,
                     np.asarray(volume_shape) - 1)
    return np.ravel_multi_index(tuple(voxels.T), tuple(volume_shape)).astype(np.uint64) + np.uint64(1)


def crossing_offsets(connectivity: int, axis: int, planar: bool = False) -> list[tuple[int, int]]:
    """Return the shifts, within a boundary plane, that a step across it may take.

    Parameters
    ----------
    connectivity : {6, 18, 26}
        6 crosses straight; 18 may also move one step along one in-plane axis; 26 along both.
    axis : {0, 1, 2}
        The axis the boundary is normal to (0: z); the plane keeps the other two, in order.
    planar : bool
        Labelling plane by plane (thick sections, see :func:`~neuropipe.ops.thick_sections`):
        nothing connects across z; within a plane 6 means 4-connected, 18 and 26 8-connected.
    """
    if connectivity not in (6, 18, 26):
        raise ValueError(f"connectivity must be 6, 18 or 26; got {connectivity!r}")
    if planar:
        if axis == 0:
            return []
        return [(0, 0)] if connectivity == 6 else [(0, -1), (0, 0), (0, 1)]
    if connectivity == 6:
        return [(0, 0)]
    if connectivity == 18:
        return [(0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)]
    return [(d0, d1) for d0 in (-1, 0, 1) for d1 in (-1, 0, 1)]


def boundary_pairs(before: np.ndarray, after: np.ndarray, offsets) -> np.ndarray:
    """Return the distinct fragment pairs that touch across a boundary.

    Parameters
    ----------
    before, after : ndarray of shape (A, B), uint64
        Fragment ids of the planes on either side of the boundary (0 = background).
    offsets : list of (int, int)
        From :func:`crossing_offsets`.

    Returns
    -------
    ndarray of shape (N, 2), uint64
        Each touching pair once, ``(id before, id after)``, in increasing order.
    """
    rows, cols = before.shape
    firsts, seconds = [np.empty(0, np.uint64)], [np.empty(0, np.uint64)]
    for d0, d1 in offsets:
        first, second = before[max(0, -d0):rows - max(0, d0), max(0, -d1):cols - max(0, d1)], \
            after[max(0, d0):rows - max(0, -d0), max(0, d1):cols - max(0, -d1)]
        touching = (first > 0) & (second > 0)
        first, second = first[touching], second[touching]
        runs = np.ones(len(first), bool)  # a pair touches along a run of voxels: keep each run once
        np.not_equal(first[1:], first[:-1], out=runs[1:])
        runs[1:] |= second[1:] != second[:-1]
        firsts.append(first[runs])
        seconds.append(second[runs])
    first, second = np.concatenate(firsts), np.concatenate(seconds)
    values = np.unique(np.concatenate([first, second]))  # ids by rank: a pair of them is one int64
    count = np.int64(len(values))
    keys = np.unique(np.searchsorted(values, first) * count + np.searchsorted(values, second))
    return np.stack([values[keys // count], values[keys % count]], axis=1).astype(np.uint64)  # sorted, as the ranks


def merge_fragments(fragments: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Join fragments that touch into components with union-find.

    Parameters
    ----------
    fragments : ndarray of uint64
        Every fragment id, each once.
    pairs : ndarray of shape (N, 2), uint64
        Touching fragments (ids from ``fragments``).

    Returns
    -------
    ndarray of int64
        For each fragment (same order), the index of its component's root fragment in
        ``fragments``; fragments with the same root form one component.
    """
    fragments = np.asarray(fragments, np.uint64)
    order = np.argsort(fragments)
    parent = np.arange(len(fragments))

    def find(node: int) -> int:
        while parent[node] != node:
            parent[node] = parent[parent[node]]  # path halving
            node = parent[node]
        return node

    if len(pairs):
        ends = order[np.searchsorted(fragments, np.asarray(pairs, np.uint64).ravel(), sorter=order)].reshape(-1, 2)
        for a, b in ends:
            root_a, root_b = find(a), find(b)
            if root_a != root_b:
                parent[max(root_a, root_b)] = min(root_a, root_b)
    return np.array([find(node) for node in range(len(fragments))], dtype=np.int64)


def number_components(roots: np.ndarray, first_voxels: np.ndarray, voxel_counts: np.ndarray, *, dust: int = 0,
                      max_count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Label stitched components as whole-volume labelling would, dropping dust and the smallest.

    Parameters
    ----------
    roots : ndarray of int64
        Per fragment, its component's root (from :func:`merge_fragments`).
    first_voxels : ndarray of int64
        Per fragment, the raster index (in the whole volume) of its first voxel.
    voxel_counts : ndarray of int64
        Per fragment, its voxel count.
    dust : int
        Components with fewer voxels are dropped.
    max_count : int, optional
        Keep only this many of the largest components (ties: the earlier first voxel).

    Returns
    -------
    labels : ndarray of uint32
        Per fragment, its component's label 1..N in raster order of the components' first
        voxels, 0 where the component was dropped.
    components : ndarray of int64
        Per kept label (label - 1), the root fragment index.
    """
    unique_roots, component = np.unique(roots, return_inverse=True)
    first = np.full(len(unique_roots), np.iinfo(np.int64).max)
    np.minimum.at(first, component, first_voxels)
    counts = np.bincount(component, weights=voxel_counts, minlength=len(unique_roots)).astype(np.int64)
    keep = np.flatnonzero(counts >= max(dust, 1))
    keep = keep[np.argsort(first[keep], kind="stable")]  # raster order of first voxels: labels 1..N
    if max_count is not None and len(keep) > max_count:
        largest = np.lexsort((np.arange(len(keep)), -counts[keep]))[:max_count]
        keep = keep[np.sort(largest)]
    label_of = np.zeros(len(unique_roots), np.uint32)
    label_of[keep] = np.arange(1, len(keep) + 1, dtype=np.uint32)
    return label_of[component], unique_roots[keep]


def pieces(ids: np.ndarray, values=None, *, origin=(0, 0, 0), volume_shape=None) -> dict:
    """Describe the labelled pieces of a block's core for assembling them across blocks.

    Parameters
    ----------
    ids : ndarray of uint64
        The core's piece ids (0 = none).
    values : ndarray of float, or callable, optional
        Summed per piece (e.g. a probability, for the mean over a whole object); a callable
        ``values(z)`` returns plane ``z`` (so a block need not hold a float64 copy of itself).
    origin, volume_shape : tuple of int
        Where the core starts in the volume, and the volume's shape (for raster indices).

    Returns
    -------
    dict
        ``ids`` (sorted), ``first_voxels`` (raster index in the volume of each piece's first
        voxel), ``voxel_counts``, ``coordinate_sums`` (N x 3, ZYX, volume coordinates) and
        ``value_sums``.

    Notes
    -----
    Planes are described one at a time and their rows merged, so the memory this needs is a
    few planes' worth, not several copies of the block in int64 (which it was: 80 MB for a
    block of a million voxels).
    """
    volume_shape = tuple(volume_shape or ids.shape)
    plane_of = values if callable(values) else (lambda z: values[z])
    per_plane = [_plane_pieces(ids[z], z + origin[0], origin, volume_shape,
                               None if values is None else plane_of(z)) for z in range(ids.shape[0])]
    rows = {name: np.concatenate([plane[name] for plane in per_plane]) if per_plane else np.zeros(0)
            for name in ("ids", "first_voxels", "voxel_counts", "z_sums", "y_sums", "x_sums", "value_sums")}
    unique, inverse = np.unique(rows["ids"].astype(np.uint64), return_inverse=True)
    count = len(unique)
    first = np.full(count, np.iinfo(np.int64).max)
    np.minimum.at(first, inverse, rows["first_voxels"].astype(np.int64))

    def summed(name):
        return np.bincount(inverse, weights=rows[name], minlength=count)

    return dict(ids=unique, first_voxels=first, voxel_counts=summed("voxel_counts").astype(np.int64),
                coordinate_sums=np.stack([summed("z_sums"), summed("y_sums"), summed("x_sums")], axis=1)
                if count else np.zeros((0, 3)), value_sums=summed("value_sums"))


def _plane_pieces(plane: np.ndarray, z: int, origin, volume_shape, values) -> dict:
    """Per piece present in one ZYX plane: id, first raster index, count, coordinate and value sums."""
    flat = plane.ravel()
    present = np.flatnonzero(flat)
    unique, first_index, inverse = np.unique(flat[present], return_index=True, return_inverse=True)
    count = len(unique)
    y, x = np.unravel_index(present[first_index], plane.shape)
    first = np.ravel_multi_index((np.full(count, z), y + origin[1], x + origin[2]), volume_shape)
    voxel_counts = np.bincount(inverse, minlength=count).astype(np.float64)
    y_all, x_all = np.unravel_index(present, plane.shape)
    value_sums = (np.bincount(inverse, weights=np.asarray(values, np.float64).ravel()[present], minlength=count)
                  if values is not None else np.zeros(count))
    return dict(ids=unique, first_voxels=first, voxel_counts=voxel_counts, z_sums=voxel_counts * z,
                y_sums=np.bincount(inverse, weights=y_all + origin[1], minlength=count),
                x_sums=np.bincount(inverse, weights=x_all + origin[2], minlength=count), value_sums=value_sums)


def block_fragments(mask: np.ndarray, block_index: int, *, connectivity: int, voxel_size=None, origin=(0, 0, 0),
                    volume_shape=None, values=None, dust: int = 0) -> tuple[np.ndarray, dict]:
    """Label one block's core; return its labels and the :func:`pieces` they are.

    The labels (uint32, 1..N in the block) are kept as they are, and the pieces named by
    fragment ids (:func:`fragment_ids`): ``fragment_ids(labels, block_index)`` names the
    labels in the volume.

    Parameters
    ----------
    mask : ndarray of bool
        The block's core (no halo).
    block_index : int
        Linear index of the block in its grid (makes the fragment ids unique).
    values : ndarray of float, or callable, optional
        As for :func:`pieces`.
    dust : int
        Pieces smaller than this that touch none of the core's faces are left out: they
        are whole components too small to keep, and describing them would make the
        volume's assembly hold millions of pieces of noise.

    Notes
    -----
    The pieces are described from cc3d's own statistics (counts, centroids, bounding boxes)
    and one weighted count per plane: what :func:`pieces` finds by sorting every plane.
    """
    found = label_components(mask, connectivity=connectivity, voxel_size=voxel_size)
    volume_shape = tuple(volume_shape or mask.shape)
    count = found.count
    value_sums = np.zeros(count + 1)
    if values is not None:
        plane_of = values if callable(values) else (lambda z: values[z])
        for z in range(mask.shape[0]):
            value_sums += np.bincount(found.labels[z].ravel(), weights=np.asarray(plane_of(z), float).ravel(),
                                      minlength=count + 1)
    described = dict(ids=fragment_ids(np.arange(1, count + 1, dtype=np.uint32), block_index),
                     first_voxels=_first_voxels(found.labels, found.bounding_boxes[:, 0], origin, volume_shape),
                     voxel_counts=found.voxel_counts,
                     coordinate_sums=(found.centroids + np.asarray(origin, float)) * found.voxel_counts[:, None],
                     value_sums=value_sums[1:])
    if dust > 0 and count:
        on_faces = np.unique(np.concatenate([np.unique(found.labels[index]) for index in _faces(mask.ndim)]))
        keep = (described["voxel_counts"] >= dust) | np.isin(np.arange(1, count + 1), on_faces)
        described = {name: column[keep] for name, column in described.items()}
    return found.labels, described


def _first_voxels(labels: np.ndarray, first_planes: np.ndarray, origin, volume_shape) -> np.ndarray:
    """Return the raster index (in the volume) of the first voxel of each label 1..N of a block.

    ``first_planes`` holds each label's first plane (its bounding box's z start). cc3d numbers
    components in raster order, so the labels first appear in increasing order, each where
    the block's running maximum rises to it; where that does not hold, plane by plane: within
    a plane the labels that start there, else by sorting.
    """
    flat = labels.ravel()
    rises = np.flatnonzero(np.diff(np.maximum.accumulate(flat), prepend=0))
    if np.array_equal(flat[rises], np.arange(1, len(first_planes) + 1)):
        where = np.unravel_index(rises, labels.shape)
        return np.ravel_multi_index(tuple(at + start for at, start in zip(where, origin)), volume_shape)
    first = np.zeros(len(first_planes), np.int64)
    width = labels.shape[2]
    for z in np.unique(first_planes):
        starting = np.flatnonzero(first_planes == z) + 1
        flat = labels[z].ravel()
        rises = np.flatnonzero(np.diff(np.maximum.accumulate(flat), prepend=0))
        at = rises[flat[rises] >= starting[0]]
        if not np.array_equal(flat[at], starting):
            present, index = np.unique(flat, return_index=True)
            at = index[np.searchsorted(present, starting)]
        y, x = np.divmod(at, width)
        first[starting - 1] = np.ravel_multi_index((np.full(len(at), z + origin[0]), y + origin[1], x + origin[2]),
                                                   volume_shape)
    return first


def _faces(ndim: int) -> list[tuple]:
    """Return the index expressions of an array's faces (first and last plane along each axis)."""
    return [tuple([slice(None)] * axis + [end]) for axis in range(ndim) for end in (0, -1)]


WHOLE_PLANE_VOXELS = 1 << 20  # boundary planes up to this size are stitched whole, larger ones a block face at a time


def stitch_pairs(read_plane, shape, block, connectivity: int, planar: bool) -> np.ndarray:
    """Return every fragment pair touching across the block boundaries of a volume.

    ``read_plane(axis, index, box)`` returns the fragment ids of plane ``index`` normal to
    ``axis`` inside ``box`` (the other two axes' ranges).  A boundary plane of up to
    :data:`WHOLE_PLANE_VOXELS` is read whole; a larger one a block face at a time, so memory
    stays that of a face (:func:`plane_reader` reads them so from an array).  A face is then
    grown by one voxel on its far sides: a diagonal step across the boundary and across the
    edge of two faces lies in the nearer face, grown so.
    """
    found = [np.empty((0, 2), np.uint64)]
    for axis in range(3):
        offsets = crossing_offsets(connectivity, axis, planar)
        plane, size = [n for a, n in enumerate(shape) if a != axis], [n for a, n in enumerate(block) if a != axis]
        if not offsets or block[axis] >= shape[axis]:
            continue
        boxes = [tuple((0, n) for n in plane)] if np.prod(plane) <= WHOLE_PLANE_VOXELS else \
            [tuple((start, min(n, stop + 1)) for (start, stop), n in zip(face, plane)) for _, face in
             block_grid(plane, size)]
        for boundary in range(block[axis], shape[axis], block[axis]):
            for box in boxes:
                found.append(boundary_pairs(read_plane(axis, boundary - 1, box), read_plane(axis, boundary, box),
                                            offsets))
    pairs = np.concatenate(found)
    return np.unique(pairs, axis=0) if len(pairs) else pairs


FACE_AXES = "zyx"


def face_pieces(ids: np.ndarray, core, volume_shape, block, block_index: int | None = None) -> list[Piece]:
    """Return the planes a block's fragment ids are stitched by: the first and last of its core along each axis.

    One array per axis along which the volume has several blocks, ``faces_z``, ``faces_y``
    and ``faces_x``: the volume's extent but two planes per block along that axis (its first,
    then its last), each plane of each block a chunk of its own.

    Parameters
    ----------
    ids : ndarray of uint64
        The core's fragment ids; or, with ``block_index``, its labels in the block.
    core : Box
        The block's core.
    volume_shape, block : tuple of int
        ZYX extents of the volume and of its blocks.
    block_index : int, optional
        The block's linear index, where ``ids`` are its labels (:func:`block_fragments`).
    """
    found, counts = [], grid_shape(volume_shape, block)
    for axis, count in enumerate(counts):
        if count < 2:  # no boundary across this axis (face_names)
            continue
        index = core[axis][0] // block[axis]
        shape, chunks, box = list(volume_shape), list(block), list(core)
        shape[axis], chunks[axis], box[axis] = 2 * count, 1, (2 * index, 2 * index + 2)
        data = np.stack([np.take(ids, 0, axis=axis), np.take(ids, -1, axis=axis)], axis=axis)
        data = fragment_ids(data, block_index) if block_index is not None else data.astype(np.uint64, copy=False)
        found.append(Piece(f"faces_{FACE_AXES[axis]}", tuple(shape), tuple(chunks), tuple(box), data))
    return found


def face_names(volume_shape, block) -> list[str]:
    """Return the names of the arrays of block faces a volume has: one per axis along which it has several blocks."""
    return [f"faces_{name}" for name, count in zip(FACE_AXES, grid_shape(volume_shape, block)) if count > 1]


@dataclass(frozen=True)
class Faces:
    """The fragment ids of a volume's block faces, as its blocks kept them (:func:`face_pieces`).

    Stands in for the whole volume's fragment ids where boundaries are stitched
    (:func:`plane_reader`, :func:`~neuropipe.ops.block_detection.assemble_cells`): the planes on
    either side of every boundary, and nothing else, are read.

    Attributes
    ----------
    arrays : dict
        ``faces_z``, ``faces_y``, ``faces_x`` (those the volume has), numpy or zarr.
    shape, block : tuple of int
        ZYX extents of the volume and of its blocks.
    """

    arrays: dict
    shape: tuple
    block: tuple

    def read_plane(self, axis: int, index: int, box) -> np.ndarray:
        """Return plane ``index`` (a block's first or last) normal to ``axis``, inside ``box`` (the other axes)."""
        size = self.block[axis]
        row = 2 * (index // size) + (0 if index % size == 0 else 1)
        box = list(box)
        box.insert(axis, (row, row + 1))
        return np.take(np.asarray(self.arrays[f"faces_{FACE_AXES[axis]}"][slices(box)]), 0, axis=axis)


def plane_reader(fragments):
    """Return the ``read_plane(axis, index, box)`` of :func:`stitch_pairs` for an array of fragment ids.

    Parameters
    ----------
    fragments : array_like of uint64, or Faces
        ZYX fragment ids of the whole volume: numpy, or a chunked (zarr) array read one chunk
        at a time (:func:`~neuropipe.ops.grid.read_chunkwise`); or its block faces alone.

    Returns
    -------
    callable
        ``read_plane(axis, index, box)``: plane ``index`` normal to ``axis``, inside ``box``
        (the other two axes' ranges).
    """
    if isinstance(fragments, Faces):
        return fragments.read_plane

    def read_plane(axis, index, box):
        box = list(box)
        box.insert(axis, (index, index + 1))
        return np.take(read_chunkwise(fragments, box), 0, axis=axis)

    return read_plane


def stitched_components(mask: np.ndarray, block, *, connectivity: int = 26, voxel_size=None, dust: int = 0,
                        max_count: int | None = None) -> np.ndarray:
    """Label a mask block by block and stitch the blocks: equal to labelling it whole.

    The in-memory reference of what the blockwise tables do through the store; used to test
    them and to benchmark.
    """
    fragments, faces = np.zeros(mask.shape, np.uint64), {}
    described = []
    for linear, (_, core) in enumerate(block_grid(mask.shape, block)):
        labels, part = block_fragments(mask[slices(core)], linear, connectivity=connectivity, voxel_size=voxel_size,
                                       origin=[start for start, _ in core], volume_shape=mask.shape)
        fragments[slices(core)] = fragment_ids(labels, linear)
        paste(faces, face_pieces(labels, core, mask.shape, block, block_index=linear))
        described.append(part)
    planar = voxel_size is not None and thick_sections(voxel_size)
    pairs = stitch_pairs(plane_reader(Faces(faces, mask.shape, block)), mask.shape, block, connectivity, planar)
    ids = np.concatenate([part["ids"] for part in described])
    roots = merge_fragments(ids, pairs)
    labels, _ = number_components(roots, np.concatenate([part["first_voxels"] for part in described]),
                                  np.concatenate([part["voxel_counts"] for part in described]),
                                  dust=dust, max_count=max_count)
    return relabel(fragments, ids, labels)


def relabel(fragments: np.ndarray, ids: np.ndarray, labels: np.ndarray, block_index: int | None = None) -> np.ndarray:
    """Replace each piece id in ``fragments`` by its label (ids not listed become 0); uint32.

    A volume is relabelled plane by plane, so this needs the output and a plane's worth of
    int64 indices.  ``block_index``: ``fragments`` are one block's labels (:func:`block_fragments`),
    or its :func:`fragment_ids`, looked up by their label in the block (a table as long as the
    block has labels; some 15 times faster than searching the sorted ids).
    """
    if block_index is not None:
        return _relabel_block(fragments, ids, labels, block_index)
    order = np.argsort(ids)
    sorted_ids = ids[order]
    lookup = np.concatenate([[0], labels[order]]).astype(np.uint32)
    if not len(sorted_ids):
        return np.zeros(fragments.shape, np.uint32)

    def relabelled(values):
        position = np.minimum(np.searchsorted(sorted_ids, values), len(sorted_ids) - 1)
        return lookup[np.where((sorted_ids[position] == values) & (values > 0), position + 1, 0)]

    if fragments.ndim < 2:
        return relabelled(fragments)
    out = np.empty(fragments.shape, np.uint32)
    for z in range(fragments.shape[0]):
        out[z] = relabelled(fragments[z])
    return out


def _relabel_block(fragments: np.ndarray, ids: np.ndarray, labels: np.ndarray, block_index: int) -> np.ndarray:
    """:func:`relabel` one block's labels (or fragment ids) through a table indexed by their label in the block."""
    low = np.uint64((1 << BLOCK_ID_SHIFT) - 1)
    mine = (np.asarray(ids, np.uint64) >> np.uint64(BLOCK_ID_SHIFT)) == np.uint64(block_index + 1)
    local = (ids[mine] & low).astype(np.int64)
    out = np.empty(fragments.shape, np.uint32)
    if fragments.dtype == np.uint32:  # the labels the block keeps: each looked up directly
        table = np.zeros(max(int(fragments.max(initial=0)), int(local.max(initial=0))) + 1, np.uint32)
        table[local] = labels[mine]  # 0 for labels not listed
        for z in range(fragments.shape[0]):
            np.take(table, fragments[z], out=out[z])
        return out
    table = np.zeros(int(local.max(initial=0)) + 2, np.uint32)  # fragment ids: those past its end not listed
    table[local] = labels[mine]
    for z in range(fragments.shape[0]):
        index = (fragments[z] & low).astype(np.int64)
        out[z] = table[np.minimum(index, len(table) - 1, out=index)]
    return out
