"""Blockwise computation: volumes larger than memory as ordinary DataJoint rows.

:mod:`neuropipe.ops.grid` cuts a volume into blocks (pure; ``block_grid``, ``grow`` and
``slices`` are re-exported here).  :mod:`.tables` turns that into DataJoint: a table of blocks
per volume and block shape, Computed tables whose ``make()`` sees one block plus its halo, and
an output zarr array in the store that each block writes its own region of.
"""

from neuropipe.blockwise.tables import (
    BLOCK_DEFINITION,
    BLOCKING_DEFINITION,
    GRID_ATTRIBUTES,
    PER_BLOCK_ATTRIBUTES,
    Block,
    BlockGrid,
    PerBlock,
    complete,
    open_output,
    open_result,
    output_key,
    output_reference,
)
from neuropipe.ops.grid import block_grid, grow, slices

__all__ = ["BLOCKING_DEFINITION", "BLOCK_DEFINITION", "GRID_ATTRIBUTES", "PER_BLOCK_ATTRIBUTES", "Block", "BlockGrid",
           "PerBlock", "block_grid", "complete", "grow", "open_output", "open_result", "output_key",
           "output_reference", "slices"]
