"""The pure parts of the blockwise tables: a block's geometry, a result's key, the grid they build on."""

import numpy as np

from neuropipe import blockwise
from neuropipe.blockwise.tables import Block, output_key
from neuropipe.ops import grid


def test_the_grid_functions_are_those_of_neuropipe_ops():
    assert (blockwise.block_grid, blockwise.grow, blockwise.slices) == (grid.block_grid, grid.grow, grid.slices)


def test_a_block_crops_its_core_out_of_what_it_read():
    shape, size = (10, 30, 25), (4, 12, 12)
    volume = np.arange(np.prod(shape)).reshape(shape)
    for linear, (index, core) in enumerate(blockwise.block_grid(shape, size)):
        read = blockwise.grow(core, (1, 5, 0), shape)
        block = Block(index=index, linear=linear, core=core, read=read, volume_shape=shape, block_shape=size)
        np.testing.assert_array_equal(volume[blockwise.slices(read)][block.core_in_read],
                                      volume[blockwise.slices(core)])


def test_a_result_is_keyed_by_its_block_key_less_the_grid_coordinates():
    key = {"dataset": "s", "blocking_id": "small", "grid_z": 1, "grid_y": 0, "grid_x": 2, "detection_id": "abc"}
    assert output_key(key) == {"dataset": "s", "blocking_id": "small", "detection_id": "abc"}
