"""A step run block by block: ``@step(schema, block=(z, y, x), halo=(z, y, x))``.

The same function as a whole-volume step, declared with a block shape, becomes three tables
(:mod:`neuropipe.blockwise` underneath):

- ``<Name>Grid`` (Computed, with part ``Block``): the blocks of each input volume;
- ``<Name>Block`` (Computed): one job per block and parameter set; reads the block plus
  ``halo`` from every input, calls the function and writes the block's core into one
  chunked zarr array shared by all blocks (chunks are the block shape); a failed block is
  retried alone;
- ``<Name>`` (Computed): the assembled result, made once every block is done; it stores the
  shared array (``<name>_zarr``), so later steps read it like a whole-volume step's.  Its
  ``grid_table`` and ``block_table`` attributes are the other two.

Where the halo covers the function's reach (a Gaussian of sigma s truncated at 4 s reaches
4 s voxels), the result equals the whole-volume call: blocks at the volume's edge read up to
the edge, as the whole volume would.
"""

from __future__ import annotations

import numpy as np

from neuropipe.blockwise import tables as blockwise
from neuropipe.database import import_datajoint
from neuropipe.errors import ConfigurationError
from neuropipe.steps.inputs import Restricted


def declare(schema, function, class_name: str, *, block, halo, sources, parents: tuple, stored, params,
            fetch_settings, context: dict, attributes: dict) -> tuple:
    """Declare the grid, per-block and assembled tables of a blockwise step; return the three.

    ``parents`` are the tables the grid depends on and those that restrict its keys
    (:func:`~neuropipe.steps.inputs.parents`); ``fetch_settings(key)`` the function's settings.
    """
    dj = import_datajoint()
    block, halo = _shape(block, "block", function), _shape(halo or (0, 0, 0), "halo", function)
    if len(stored) != 1 or stored[0].kind != "array" or not sources:
        raise ConfigurationError(f"step {function.__name__}: a blockwise step reads arrays and returns one "
                                 f"(-> numpy.ndarray)")
    depends, restricted_by = parents

    class Grid(Restricted, blockwise.BlockGrid, dj.Computed):
        definition = "\n".join([*(f"-> {table.__name__}" for table in depends), "---", blockwise.GRID_ATTRIBUTES])

        class Block(dj.Part):
            definition = blockwise.BLOCK_DEFINITION

        def volume_shape(self, key):
            return tuple(int(n) for n in sources[0].fetch(key).shape)

        def block_shape(self, key):
            return block

        def least_halo(self, key):
            return halo

    grid = _bind(schema, Grid, f"{class_name}Grid", function, context,
                 f"The blocks of the volumes {function.__name__} reads, {block} voxels each.",
                 {"restricted_by": tuple(restricted_by)})

    class PerBlock(blockwise.PerBlock, dj.Computed):
        definition = f"-> {grid.__name__}.Block\n-> {params.__name__}\n---\n{blockwise.PER_BLOCK_ATTRIBUTES}"
        output_dtype = "result"

        def read(self, key, box):
            return [np.asarray(source.fetch(key)[blockwise.slices(box)]) for source in sources]

        def compute(self, key, data, block):
            return np.asarray(function(*data, **fetch_settings(key))), {}

    PerBlock.grid = grid
    per_block = _bind(schema, PerBlock, f"{class_name}Block", function, {**context, grid.__name__: grid},
                      f"One block of {function.__name__}, with halo {halo}.", attributes)
    name = stored[0].name

    class Assembled(dj.Computed):
        definition = f"-> {grid.__name__}\n-> {params.__name__}\n---\n{stored[0].definition()}"

        @property
        def key_source(self):
            return blockwise.complete(grid.proj() * params.proj(), per_block)

        def make(self, key):
            """Store the array the blocks wrote, once every block is done."""
            self.insert1({**key, f"{name}_zarr": blockwise.output_reference(per_block(), key)})

    assembled = _bind(schema, Assembled, class_name, function, {**context, grid.__name__: grid},
                      function.__doc__ or f"{function.__name__}, assembled from its blocks.",
                      {**attributes, "grid_table": grid, "block_table": per_block})
    return grid, per_block, assembled


def _bind(schema, cls, name: str, function, context: dict, doc: str, attributes=None):
    cls.__name__ = cls.__qualname__ = name
    cls.__module__ = function.__module__
    cls.__doc__ = doc
    for key, value in (attributes or {}).items():
        setattr(cls, key, value)
    return schema(cls, context=context)


def _shape(value, what: str, function) -> tuple:
    shape = tuple(int(n) for n in value)
    if len(shape) != 3 or min(shape) < (1 if what == "block" else 0):
        raise ConfigurationError(f"step {function.__name__}: {what} must be three "
                                 f"{'positive' if what == 'block' else 'non-negative'} ZYX sizes, got {value!r}")
    return shape
