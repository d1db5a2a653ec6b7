"""Block grids: a volume cut into blocks, each read with a halo around it (pure, no database).

A block is named by its grid coordinates ``(bz, by, bx)``; its *core* is the part of the
volume it owns and writes, its *read box* the core grown by a halo and clipped to the volume.
Cores tile the volume exactly (the last block along an axis may be smaller), so results
written core by core cover every voxel once.  :mod:`neuropipe.blockwise` builds its DataJoint
tables on these; the block-by-block kernels (:mod:`~neuropipe.ops.stitch`,
:mod:`~neuropipe.ops.block_detection`) use them directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product

Box = tuple  # ((z0, z1), (y0, y1), (x0, x1)), half-open


@dataclass(frozen=True)
class Piece:
    """Part of a block's result kept beside its core: ``data`` for ``box`` of the array ``name``.

    The array (``shape``, chunked by ``chunks``) is shared by the blocks of one result, and
    each chunk of it is written by one block only, as the core's chunks are: seams a membrane
    block shares with its neighbours, the faces a detection block is stitched by.

    Attributes
    ----------
    name : str
        The array's name among the result's arrays.
    shape, chunks : tuple of int
        The whole array's extent and chunk shape.
    box : Box
        Where ``data`` goes in the array, half-open.
    data : ndarray
    """

    name: str
    shape: tuple
    chunks: tuple
    box: Box
    data: object


def paste(arrays: dict, pieces) -> dict:
    """Write ``pieces`` into in-memory arrays, ``arrays[name]`` (made zero-filled), as blocks write them to the store.

    Returns ``arrays``.  The in-memory references of the blockwise tables use it.
    """
    import numpy as np

    for piece in pieces:
        if piece.name not in arrays:
            arrays[piece.name] = np.zeros(piece.shape, piece.data.dtype)
        arrays[piece.name][slices(piece.box)] = piece.data
    return arrays


def grid_shape(shape, block) -> tuple:
    """Return the number of blocks along each axis."""
    return tuple(-(-int(size) // int(step)) for size, step in zip(shape, block))


def block_grid(shape, block) -> list[tuple[tuple, Box]]:
    """Return ``(grid coordinates, core box)`` of every block, in C order.

    Parameters
    ----------
    shape : tuple of int
        Volume extent, ZYX.
    block : tuple of int
        Block extent, ZYX; blocks at the far faces are clipped to the volume.
    """
    if any(int(step) < 1 for step in block):
        raise ValueError(f"block shape must be positive, got {tuple(block)}")
    return [(index, core_box(index, shape, block)) for index in product(*(range(n) for n in grid_shape(shape, block)))]


def core_box(index, shape, block) -> Box:
    """Return the core box of the block at grid coordinates ``index``."""
    return tuple((i * step, min((i + 1) * step, int(size))) for i, step, size in zip(index, block, shape))


def grow(box: Box, halo, shape) -> Box:
    """Return ``box`` grown by ``halo`` voxels on every side, clipped to the volume."""
    return tuple((max(0, start - h), min(int(size), stop + h)) for (start, stop), h, size in zip(box, halo, shape))


def slices(box: Box, within: Box | None = None) -> tuple:
    """Return the slices of ``box``, relative to the start of ``within`` where given."""
    origin = [start for start, _ in within] if within else [0] * len(box)
    return tuple(slice(start - first, stop - first) for (start, stop), first in zip(box, origin))


def contains(box: Box, point) -> bool:
    """Return True when ``point`` (ZYX, may be fractional) lies in the half-open ``box``."""
    return all(start <= value < stop for (start, stop), value in zip(box, point))


def read_chunkwise(array, box: Box):
    """Read ``box`` of a chunked array one chunk at a time into one numpy array.

    Zarr decodes every chunk a read touches, all at once: a thin box across many chunks (a
    block's face, grown by a voxel into its neighbours) would hold nine decoded chunks for one
    plane.  Read piece by piece, it holds one.  An array without ``chunks`` (numpy) is read
    in one piece.
    """
    import numpy as np

    out = np.empty([stop - start for start, stop in box], array.dtype)
    chunks = getattr(array, "chunks", None) or [max(1, int(size)) for size in array.shape]
    pieces = [_chunk_ranges(start, stop, chunk) for (start, stop), chunk in zip(box, chunks)]
    for part in product(*pieces):
        target = tuple(slice(a - start, b - start) for (a, b), (start, _) in zip(part, box))
        out[target] = array[tuple(slice(a, b) for a, b in part)]
    return out


def _chunk_ranges(start: int, stop: int, chunk: int) -> list[tuple[int, int]]:
    """Split ``[start, stop)`` where it crosses multiples of ``chunk``."""
    edges = [start, *range((start // chunk + 1) * chunk, stop, chunk), stop]
    return list(zip(edges[:-1], edges[1:]))
