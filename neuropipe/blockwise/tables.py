"""Blockwise DataJoint tables: blocks are rows, so workers, retries, liveness and provenance apply.

Three pieces, each a mixin for a table the user declares in their own schema:

- :class:`BlockGrid` — a Computed table keyed by a volume and a block shape (a Lookup with
  :data:`BLOCKING_DEFINITION`) whose part table ``Block`` (:data:`BLOCK_DEFINITION`) lists the
  blocks by grid coordinates;
- :class:`PerBlock` — a Computed table keyed by ``-> Grid.Block`` (and parameters): its
  ``make()`` reads the block plus halo (:meth:`PerBlock.read`), calls
  :meth:`PerBlock.compute` on that numpy array and writes the block's core into a zarr array
  in the store shared by all blocks of the same result; zarr chunks are the block shape, so no
  two blocks ever write one chunk;
- :func:`complete` — the ``key_source`` of the table that assembles a result once all of its
  blocks are done (:func:`output_reference` gives it the shared array for an ``<object@>``
  attribute).

A volume smaller than the block shape is the one-block case of the same code.  Example::

    @schema
    class Smoothed(blockwise.PerBlock, dj.Computed):
        definition = '''
        -> VolumeBlocks.Block
        -> SmoothingParams
        ---
        ''' + blockwise.PER_BLOCK_ATTRIBUTES
        grid = VolumeBlocks
        output_dtype = "float32"

        def halo(self, key):
            return (2, 8, 8)

        def read(self, key, box):
            return Volume.open_image(key)[blockwise.slices(box)]

        def compute(self, key, data, block):
            return scipy.ndimage.gaussian_filter(data, 2.0), {}
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np

from neuropipe import compat
from neuropipe.database import STORE_NAME
from neuropipe.ops.grid import Box, Piece, block_grid, core_box, grid_shape, grow, slices

GRID_COORDINATES = ("grid_z", "grid_y", "grid_x")

BLOCKING_DEFINITION = """
blocking_id : varchar(32)             # name of this block shape
---
size_z : int32                        # block extent along z, voxels
size_y : int32
size_x : int32
halo_z = 0 : int32                    # least halo read around each block (steps may read more)
halo_y = 0 : int32
halo_x = 0 : int32
"""

GRID_ATTRIBUTES = """
depth : int32                         # the volume's extent, voxels
height : int32
width : int32
blocks_z : int32                      # blocks along each axis
blocks_y : int32
blocks_x : int32
block_count : int32
"""

BLOCK_DEFINITION = """
-> master
grid_z : int32                        # grid coordinates of the block
grid_y : int32
grid_x : int32
---
z0 : int32                            # its core, half-open, volume voxels
z1 : int32
y0 : int32
y1 : int32
x0 : int32
x1 : int32
"""

PER_BLOCK_ATTRIBUTES = """
seconds : float64                     # spent in compute()
"""


@dataclass(frozen=True)
class Block:
    """One block of a grid, as :meth:`PerBlock.compute` sees it.

    Attributes
    ----------
    index : tuple of int
        Grid coordinates (z, y, x).
    linear : int
        Index in C order over the grid (unique within the grid).
    core : Box
        The voxels this block owns and writes, ((z0, z1), (y0, y1), (x0, x1)).
    read : Box
        The core grown by the halo and clipped to the volume: what ``data`` covers.
    volume_shape : tuple of int
    block_shape : tuple of int
    """

    index: tuple
    linear: int
    core: Box
    read: Box
    volume_shape: tuple
    block_shape: tuple

    @property
    def core_in_read(self) -> tuple:
        """Slices of the core within the read box (to crop a result computed on ``data``)."""
        return slices(self.core, self.read)


class BlockGrid:
    """Mixin for the Computed table of blocks: one row per (volume, block shape), parts per block.

    Subclasses define ``definition`` (their parents, then :data:`GRID_ATTRIBUTES`), a part
    table ``Block`` with :data:`BLOCK_DEFINITION`, ``blocking`` (the Lookup of block shapes)
    and :meth:`volume_shape`.
    """

    blocking = None

    def volume_shape(self, key: dict) -> tuple:
        """Return the ZYX extent of the volume of ``key``."""
        raise NotImplementedError

    def block_shape(self, key: dict) -> tuple:
        """Return the ZYX block extent of ``key``'s block shape."""
        return tuple(int(v) for v in (self.blocking & key).fetch1("size_z", "size_y", "size_x"))

    def least_halo(self, key: dict) -> tuple:
        """Return the ZYX halo of ``key``'s block shape."""
        return tuple(int(v) for v in (self.blocking & key).fetch1("halo_z", "halo_y", "halo_x"))

    def make(self, key):
        """List the blocks of the volume."""
        shape, block = self.volume_shape(key), self.block_shape(key)
        counts = grid_shape(shape, block)
        self.insert1(dict(key, depth=shape[0], height=shape[1], width=shape[2], blocks_z=counts[0],
                          blocks_y=counts[1], blocks_x=counts[2], block_count=int(np.prod(counts))))
        self.Block.insert(dict(key, grid_z=index[0], grid_y=index[1], grid_x=index[2], z0=core[0][0], z1=core[0][1],
                               y0=core[1][0], y1=core[1][1], x0=core[2][0], x1=core[2][1])
                          for index, core in block_grid(shape, block))


class PerBlock:
    """Mixin for a Computed table that works on one block (plus halo) of a volume per job.

    Subclasses set ``grid`` (their :class:`BlockGrid` table) and ``output_dtype`` (None for no
    shared output array; ``"result"`` for the dtype :meth:`compute` returns), and define
    :meth:`read` and :meth:`compute`; :meth:`halo` defaults to the block shape's, and
    :meth:`read_box` (what a block reads) to its core grown by the halo.
    """

    grid = None
    output_dtype = None

    def halo(self, key: dict) -> tuple:
        """Return the ZYX halo to read around the block (default: the block shape's)."""
        return self.grid().least_halo(key)

    def read_box(self, key: dict, core: Box, volume_shape: tuple) -> Box:
        """Return the box a block reads: its core grown by :meth:`halo`, clipped to the volume.

        A step whose reach differs from block to block (the membrane U-Net's tiles) overrides
        this; the box must hold the core.
        """
        return grow(core, np.maximum(np.asarray(self.halo(key)), 0), volume_shape)

    def read(self, key: dict, box: Box) -> np.ndarray:
        """Return the input inside ``box`` (volume voxels) as a ZYX array."""
        raise NotImplementedError

    def compute(self, key: dict, data: np.ndarray, block: Block):
        """Return ``(array, row)``: the result over the read box or the core, and row attributes.

        ``(array, row, pieces)`` also writes each :class:`~neuropipe.ops.grid.Piece` into its
        array beside the output (named after it), as the core is written.
        """
        raise NotImplementedError

    def block_of(self, key: dict) -> Block:
        """Describe the block of ``key``: grid coordinates, core and read box."""
        grid = self.grid()
        master = (self.grid & key).fetch1()
        shape = (master["depth"], master["height"], master["width"])
        size = grid.block_shape(key)
        index = tuple(int(key[name]) for name in GRID_COORDINATES)
        counts = (master["blocks_z"], master["blocks_y"], master["blocks_x"])
        core = core_box(index, shape, size)
        return Block(index=index, linear=int(np.ravel_multi_index(index, counts)), core=core,
                     read=self.read_box(key, core, shape), volume_shape=shape, block_shape=size)

    def make(self, key):
        """Read the block plus halo, compute, write the core (and pieces) to the shared output, insert the row."""
        block = self.block_of(key)
        data = self.read(key, block.read)
        started = time.monotonic()
        result, row, *pieces = self.compute(key, data, block)
        seconds = time.monotonic() - started
        if self.output_dtype is not None:
            core_shape = tuple(stop - start for start, stop in block.core)
            core = result if result.shape == core_shape else result[block.core_in_read]
            dtype = result.dtype if self.output_dtype == "result" else self.output_dtype
            output = open_output(self, output_key(key), block.volume_shape, dtype, block.block_shape)
            output[slices(block.core)] = core.astype(output.dtype, copy=False)
        for piece in pieces[0] if pieces else ():
            write_piece(self, output_key(key), piece)
        self.insert1(dict(key, seconds=seconds, **row))


def write_piece(table, key: dict, piece: Piece) -> None:
    """Write a block's :class:`~neuropipe.ops.grid.Piece` into its array (:func:`open_result` reads it)."""
    array = open_output(table, key, piece.shape, piece.data.dtype, piece.chunks, name=f"_{piece.name}")
    array[slices(piece.box)] = piece.data


def open_pieces(table, key: dict, name: str):
    """Open for reading the array of the pieces called ``name`` that the blocks of one result wrote."""
    return open_result(table, key, name=f"_{name}")


def output_key(key: dict) -> dict:
    """Return ``key`` without its grid coordinates: the key of the result the block belongs to."""
    return {name: value for name, value in key.items() if name not in GRID_COORDINATES}


def complete(candidates, per_block):
    """Restrict ``candidates`` to results whose every block is done in ``per_block``.

    ``candidates`` is the assembling table's usual key source (its parents joined);
    ``per_block`` the :class:`PerBlock` table.
    """
    per_block = per_block() if isinstance(per_block, type) else per_block
    missing = per_block.key_source - per_block.proj()
    return candidates - missing.proj()


def output_path(table, key: dict, name: str = "") -> str:
    """Return the store path of the zarr array that the blocks of one result write."""
    digest = hashlib.md5(json.dumps({k: str(v) for k, v in sorted(key.items())}).encode()).hexdigest()[:16]
    return f"blockwise/{table.database}/{type(table).__name__}{name}/{digest}.zarr"


def open_output(table, key: dict, shape, dtype, chunks, name: str = ""):
    """Open (creating once, atomically) the zarr array the blocks of one result write."""
    backend = _backend(table)
    path = output_path(table, key, name)
    return _open_or_create(backend, path, shape, dtype, chunks)


def open_result(table, key: dict, name: str = ""):
    """Open for reading the zarr array the blocks of one result wrote."""
    import zarr

    from neuropipe.io.stored import _zarr_store

    return zarr.open_array(store=_zarr_store(_backend(table).get_fsmap(output_path(table, key, name))), mode="r")


def output_reference(table, key: dict, name: str = "") -> dict:
    """Return the ``<object@>`` metadata of a result's zarr array, for the assembling table's insert."""
    backend = _backend(table)
    path = output_path(table, key, name)
    full = compat.full_store_path(backend, path)
    backend.fs.invalidate_cache(full)
    files = backend.fs.find(full, detail=True)  # one listing, sizes included (no request per chunk)
    return {"path": path, "store": STORE_NAME, "size": sum(info.get("size", 0) for info in files.values()),
            "ext": ".zarr", "is_dir": True, "item_count": len(files),
            "timestamp": datetime.now(timezone.utc).isoformat()}


def _backend(table):
    return compat.store_backend(table.connection, STORE_NAME)


def _open_or_create(backend, path: str, shape, dtype, chunks):
    """Open the zarr array at ``path``, creating it first where it is absent, never replacing one.

    Workers race to create it.  On a local store the array is made in a staging folder and
    renamed into place (one worker's rename wins; the others drop theirs).  An object store
    has no rename, and needs none: the array is its metadata object, written in one atomic
    put, identical from every worker; a worker that finds it written in between opens it.
    """
    import zarr

    from neuropipe.io.stored import _protocols, _zarr_store, codec_options, write_options

    chunks = tuple(min(int(size), int(chunk)) for size, chunk in zip(shape, chunks))
    layout = dict(shape=tuple(shape), chunks=chunks, dtype=np.dtype(dtype), fill_value=0, **codec_options(dtype))
    try:
        return zarr.open_array(store=_zarr_store(backend.get_fsmap(path)), mode="r+", **write_options())
    except Exception:  # absent: create it
        pass
    full = compat.full_store_path(backend, path)
    if "file" in _protocols(backend.fs):
        staging = f"{full}.{uuid.uuid4().hex}.tmp"
        os.makedirs(os.path.dirname(full), exist_ok=True)
        zarr.open_array(store=_zarr_store(backend.fs.get_mapper(staging)), mode="w", **layout)
        try:
            os.rename(staging, full)
        except OSError:  # another worker created it first
            backend.fs.rm(staging, recursive=True)
    else:
        try:
            zarr.open_array(store=backend.get_fsmap(path), mode="a", **layout)
        except Exception:  # created by another worker in between: opened below
            pass
    return zarr.open_array(store=_zarr_store(backend.get_fsmap(path)), mode="r+", **write_options())
