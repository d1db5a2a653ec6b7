"""Components labelled block by block and stitched equal cc3d on the whole volume."""

import numpy as np
import pytest

from neuropipe.ops import label_components, stitch
from neuropipe.ops.stitch import boundary_pairs, crossing_offsets, merge_fragments, stitched_components

BLOCKS = [(5, 8, 9), (7, 37, 10), (1, 1, 41), (23, 37, 41), (4, 4, 4)]  # most do not divide (23, 37, 41)


@pytest.mark.parametrize("connectivity", [6, 18, 26])
@pytest.mark.parametrize("voxel_size", [None, (50, 4, 4)], ids=["isotropic", "thick-sections"])
def test_stitched_labels_equal_whole_volume_labels(connectivity, voxel_size):
    rng = np.random.default_rng(connectivity)
    mask = rng.random((23, 37, 41)) > 0.72
    whole = label_components(mask, connectivity=connectivity, voxel_size=voxel_size, dust=3).labels
    for block in BLOCKS:
        stitched = stitched_components(mask, block, connectivity=connectivity, voxel_size=voxel_size, dust=3)
        np.testing.assert_array_equal(stitched, whole, err_msg=str(block))


@pytest.mark.parametrize("connectivity", [6, 18, 26])
def test_objects_crossing_faces_edges_and_corners_become_one(connectivity):
    mask = np.zeros((8, 8, 8), bool)
    mask[1:7, 3, 3] = True                     # crosses the z face between blocks of 4
    mask[3, 3, 1:7] = True                     # joins it, crossing the x face
    mask[3, 3, 3], mask[4, 4, 4] = True, True  # a diagonal step across the corner of 8 blocks
    mask[5, 5, 5] = True
    whole = label_components(mask, connectivity=connectivity).labels
    stitched = stitched_components(mask, (4, 4, 4), connectivity=connectivity)
    np.testing.assert_array_equal(stitched, whole)
    assert stitched.max() == {6: 3, 18: 2, 26: 1}[connectivity]


def test_the_largest_components_are_kept_in_raster_order():
    mask = np.zeros((1, 4, 12), bool)
    mask[0, 0, 0:2], mask[0, 2, 0:5], mask[0, 0, 6:9], mask[0, 3, 7:11] = True, True, True, True
    whole_labels = label_components(mask, connectivity=26).labels
    stitched = stitched_components(mask, (1, 2, 4), connectivity=26, max_count=2)
    kept = sorted(np.unique(whole_labels[stitched > 0]).tolist())
    assert kept == [3, 4] and stitched.max() == 2  # the 5- and 4-voxel ones, renumbered 1, 2


def test_union_find_joins_chains_and_leaves_the_rest():
    ids = np.array([10, 20, 30, 40, 50], np.uint64)
    roots = merge_fragments(ids, np.array([[50, 30], [30, 10]], np.uint64))
    assert roots.tolist() == [0, 1, 0, 3, 0]


def test_thick_sections_never_join_across_z():
    assert crossing_offsets(26, 0, planar=True) == []
    before, after = np.array([[1, 0]], np.uint64), np.array([[0, 2]], np.uint64)
    assert boundary_pairs(before, after, crossing_offsets(6, 1)).shape == (0, 2)
    assert boundary_pairs(before, after, crossing_offsets(26, 1)).tolist() == [[1, 2]]


def test_block_fragments_leave_out_small_pieces_that_touch_no_face():
    mask = np.zeros((8, 8, 8), bool)
    mask[3:5, 3:5, 3:5] = True  # 8 voxels inside: a whole component, kept (not dust)
    mask[0, 0, 0] = True  # 1 voxel on a face: may join a neighbour's piece
    mask[2:7, 2, 6] = True  # 5 voxels inside, not touching the others: dust, left out
    labels, kept = stitch.block_fragments(mask, 0, connectivity=6, dust=6)
    _, every = stitch.block_fragments(mask, 0, connectivity=6)
    assert len(every["ids"]) == 3
    assert sorted(kept["voxel_counts"].tolist()) == [1, 8]
    ids = stitch.fragment_ids(labels, 0)
    assert set(kept["ids"]) <= set(np.unique(ids[ids > 0]))


@pytest.mark.parametrize("connectivity, voxel_size", [(26, None), (6, None), (26, (50, 4, 4))])
def test_block_fragments_describe_their_pieces_as_sorting_every_plane_does(connectivity, voxel_size):
    rng = np.random.default_rng(7)
    mask = rng.random((9, 30, 35)) > 0.8
    values = rng.random(mask.shape)
    origin, volume_shape = (18, 30, 70), (40, 90, 105)
    labels, described = stitch.block_fragments(mask, 5, connectivity=connectivity, voxel_size=voxel_size,
                                               origin=origin, volume_shape=volume_shape, values=lambda z: values[z])
    reference = stitch.pieces(stitch.fragment_ids(labels, 5), values, origin=origin, volume_shape=volume_shape)
    assert len(reference["ids"]) > 20
    for name in ("ids", "first_voxels", "voxel_counts"):
        np.testing.assert_array_equal(described[name], reference[name], err_msg=name)
    for name in ("coordinate_sums", "value_sums"):
        np.testing.assert_allclose(described[name], reference[name], rtol=1e-12, err_msg=name)


def test_first_voxels_are_found_where_labels_do_not_start_in_raster_order():
    labels = np.array([[[0, 2, 1], [1, 0, 2]]], np.uint32)  # 2 appears before 1 in the plane
    first = stitch._first_voxels(labels, np.array([0, 0]), (0, 0, 0), labels.shape)
    assert first.tolist() == [2, 1]


def test_a_plane_reader_reads_numpy_and_zarr_arrays_alike(tmp_path):
    import zarr

    data = np.random.default_rng(2).integers(0, 2**40, (6, 9, 11), dtype=np.uint64)
    array = zarr.create_array(store=str(tmp_path / "f.zarr"), shape=data.shape, chunks=(2, 4, 4), dtype="uint64")
    array[:] = data
    for reader in (stitch.plane_reader(data), stitch.plane_reader(array)):
        np.testing.assert_array_equal(reader(0, 3, ((1, 8), (2, 11))), data[3, 1:8, 2:11])
        np.testing.assert_array_equal(reader(1, 4, ((0, 6), (5, 9))), data[0:6, 4, 5:9])
        np.testing.assert_array_equal(reader(2, 10, ((2, 5), (0, 9))), data[2:5, 0:9, 10])


def test_the_faces_blocks_keep_read_back_as_the_planes_either_side_of_every_boundary(tmp_path):
    import zarr

    from neuropipe.ops.grid import block_grid, slices

    shape, block = (6, 9, 11), (2, 4, 11)  # one block along x: no faces kept across it
    data = np.random.default_rng(2).integers(0, 2**40, shape, dtype=np.uint64)
    assert stitch.face_names(shape, block) == ["faces_z", "faces_y"]
    arrays = {}
    for _, core in block_grid(shape, block):
        for piece in stitch.face_pieces(data[slices(core)], core, shape, block):
            if piece.name not in arrays:
                arrays[piece.name] = zarr.create_array(store=str(tmp_path / piece.name), shape=piece.shape,
                                                       chunks=piece.chunks, dtype="uint64")
            arrays[piece.name][slices(piece.box)] = piece.data
    faces = stitch.plane_reader(stitch.Faces(arrays, shape, block))
    whole = stitch.plane_reader(data)
    for axis, boundaries in ((0, (2, 4)), (1, (4, 8))):
        box = [(0, size) for size in shape]
        del box[axis]
        for boundary in boundaries:
            for index in (boundary - 1, boundary):
                np.testing.assert_array_equal(faces(axis, index, box), whole(axis, index, box))


def test_a_blocks_fragments_are_relabelled_alike_by_their_label_in_the_block():
    rng = np.random.default_rng(4)
    local = rng.integers(0, 50, (3, 8, 9)).astype(np.uint32)
    fragments = stitch.fragment_ids(local, 6)
    ids = np.concatenate([stitch.fragment_ids(np.arange(1, 40, dtype=np.uint32), index) for index in (2, 6, 7)])
    labels = rng.integers(1, 100, len(ids)).astype(np.uint32)  # labels 40..49 of block 6 are not listed: 0
    expected = stitch.relabel(fragments, ids, labels)
    np.testing.assert_array_equal(stitch.relabel(fragments, ids, labels, block_index=6), expected)
    np.testing.assert_array_equal(stitch.relabel(local, ids, labels, block_index=6), expected)  # as blocks keep them


def test_boundary_pairs_are_distinct_and_sorted():
    before = np.array([[5, 5, 0], [7, 0, 9]], np.uint64)
    after = np.array([[3, 3, 3], [0, 2, 2]], np.uint64)
    assert boundary_pairs(before, after, [(0, 0)]).tolist() == [[5, 3], [9, 2]]
    assert boundary_pairs(before, after, crossing_offsets(26, 0)).tolist() == [[5, 2], [5, 3], [7, 2], [7, 3],
                                                                               [9, 2], [9, 3]]


@pytest.mark.parametrize("connectivity", [6, 26])
def test_boundaries_stitched_a_face_at_a_time_give_the_same_labels(connectivity, monkeypatch):
    monkeypatch.setattr(stitch, "WHOLE_PLANE_VOXELS", 0)  # every boundary plane a block face at a time
    mask = np.random.default_rng(connectivity).random((23, 37, 41)) > 0.72
    whole = label_components(mask, connectivity=connectivity, dust=3).labels
    for block in BLOCKS:
        stitched = stitched_components(mask, block, connectivity=connectivity, dust=3)
        np.testing.assert_array_equal(stitched, whole, err_msg=str(block))
