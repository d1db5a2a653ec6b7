"""Cell detection block by block, assembled in memory: what DetectionBlock and CellDetection compute."""

import numpy as np
import pytest
import zarr

from neuropipe import ops
from neuropipe.ops import stitch
from neuropipe.ops.block_detection import PIECE_SHAPES, owned_cells
from neuropipe.ops.grid import block_grid, slices

BLOCKS = [(5, 8, 9), (4, 11, 30), (23, 37, 41)]  # the last holds the whole volume


@pytest.fixture(scope="module")
def membrane():
    """A membrane map of touching cells: low inside the synthetic cells, high on their walls."""
    sample = ops.make_sample((23, 37, 41), seed=5, cell_diameter=10)
    return (sample.cells == 0).astype(np.float32) * 0.8 + np.random.default_rng(5).random(sample.cells.shape) * 0.2


@pytest.mark.parametrize("voxel_size", [None, (50.0, 4.0, 4.0)], ids=["isotropic", "thick-sections"])
@pytest.mark.parametrize("block", BLOCKS)
def test_components_block_by_block_equal_the_whole_volume(membrane, block, voxel_size):
    params = {"method": "components", "threshold": 0.5, "min_voxels": 4, "max_cells": 20}
    whole = ops.detect_cells(1.0 - membrane.astype(np.float64), voxel_size=voxel_size, **params)
    labels, cells = ops.detect_blockwise(membrane, block, voxel_size=voxel_size, **params)
    assert whole.count == 20  # max_cells cuts: the largest are kept across blocks too
    np.testing.assert_array_equal(labels, whole.labels)
    np.testing.assert_allclose(cells["centroids"], whole.centroids, atol=1e-9)
    np.testing.assert_allclose(cells["scores"], whole.scores, atol=1e-9)
    np.testing.assert_array_equal(cells["voxel_counts"], whole.voxel_counts)


def test_spheres_are_each_owned_by_one_block_and_found_as_in_the_whole_volume():
    membrane = np.ones((12, 40, 44), np.float32)
    centres = [(3, 6, 6), (8, 20, 21), (5, 33, 10), (6, 9, 37), (9, 31, 34)]  # some near block faces
    zz, yy, xx = np.indices(membrane.shape)
    for z, y, x in centres:
        membrane[(zz - z) ** 2 + (yy - y) ** 2 + (xx - x) ** 2 <= 9] = 0.0
    params = {"threshold": 0.3, "stop": 0.4, "sphere_size": 6, "dilation": 2}
    whole = ops.detect_cells(1.0 - membrane.astype(np.float64), **params)
    labels, cells = ops.detect_blockwise(membrane, (6, 20, 22), **params)
    assert len(cells["centroids"]) == whole.count == len(centres)
    found = sorted(map(tuple, cells["centroids"].tolist()))
    assert found == sorted(map(tuple, whole.centroids.tolist())) == sorted(tuple(map(float, c)) for c in centres)
    assert set(np.unique(labels).tolist()) == set(range(len(centres) + 1))
    for label, count in enumerate(cells["voxel_counts"], start=1):
        assert count == np.count_nonzero(labels == label)  # counted over every block the cell lies in


def test_owned_cells_keep_the_strongest_and_count_voxels_over_all_blocks():
    owned = np.array([[7, 1, 1, 1, 0.5], [3, 2, 2, 2, 0.9], [5, 3, 3, 3, 0.5], [9, 4, 4, 4, 0.1]])
    pieces = {"piece_ids": np.array([3, 5, 7, 9, 3, 7], np.uint64), "voxel_counts": np.array([4, 2, 3, 8, 6, 1])}
    cells = owned_cells(owned, pieces, max_cells=3)
    assert cells["ids"].tolist() == [3, 5, 7]  # by score, ties by id; 9 is the weakest and cut
    assert cells["labels"].tolist() == [1, 2, 3]
    assert cells["voxel_counts"].tolist() == [10, 2, 4]
    assert cells["centroids"].tolist() == [[2, 2, 2], [3, 3, 3], [1, 1, 1]]
    assert cells["scores"].tolist() == [0.9, 0.5, 0.5]
    empty = owned_cells(np.zeros((0, 5)), pieces, max_cells=3)
    assert len(empty["ids"]) == len(empty["centroids"]) == len(empty["voxel_counts"]) == 0


def test_cells_are_assembled_alike_from_zarr_arrays_of_labels_and_faces_as_the_tables_store_them(membrane):
    params = {"method": "components", "threshold": 0.5, "min_voxels": 4}
    block = (5, 8, 9)
    shape = membrane.shape
    labels = zarr.create_array(store={}, shape=shape, chunks=block, dtype="uint32", fill_value=0)
    faces, findings = {}, []
    for linear, (_, core) in enumerate(block_grid(shape, block)):
        ids, found = ops.detect_in_block(membrane[slices(core)], read=core, core=core, linear=linear,
                                         volume_shape=shape, voxel_size=None, params=params)
        labels[slices(core)] = ids
        for piece in stitch.face_pieces(ids, core, shape, block, block_index=linear):
            if piece.name not in faces:
                faces[piece.name] = zarr.create_array(store={}, shape=piece.shape, chunks=piece.chunks,
                                                      dtype="uint64", fill_value=0)
            faces[piece.name][slices(piece.box)] = piece.data
        stored = {name: np.asarray(found[name]).ravel() for name in PIECE_SHAPES}  # blobs as a table keeps them
        findings.append({**stored, "owned": found["owned"].ravel()})
    cells = ops.assemble_cells(findings, stitch.Faces(faces, shape, block), block, voxel_size=None, params=params)
    _, expected = ops.detect_blockwise(membrane, block, **params)
    relabelled = np.zeros(shape, np.uint32)
    for linear, (_, core) in enumerate(block_grid(shape, block)):
        relabelled[slices(core)] = stitch.relabel(np.asarray(labels[slices(core)]), cells["ids"], cells["labels"],
                                                  block_index=linear)
    np.testing.assert_array_equal(relabelled, ops.detect_cells(1.0 - membrane.astype(np.float64), **params).labels)
    for name in ("centroids", "scores", "voxel_counts"):
        np.testing.assert_allclose(cells[name], expected[name])


def test_the_halo_reaches_two_cell_diameters_and_none_for_components():
    assert ops.detection_halo({}, (1.0, 1.0, 1.0)) == (52, 52, 52)  # 2 * (18 + 8): detect_cells's defaults
    assert ops.detection_halo({"sphere_size": 4, "dilation": 1}, (40.0, 4.0, 4.0)) == (1, 10, 10)
    assert ops.detection_halo({"sphere_size": 4, "dilation": 1}, (1, 1, 1), least=(3, 20, 0)) == (10, 20, 10)
    assert ops.detection_halo({"method": "components"}, (1, 1, 1), least=(3, 3, 3)) == (0, 0, 0)


def test_detection_defaults_are_those_of_the_kernel_signature():
    assert dict(ops.DETECTION_DEFAULTS) == {name: value for name, value in ops.detect_cells.__kwdefaults__.items()
                                            if name not in ("voxel_size", "centres")}
    with pytest.raises(TypeError):
        ops.DETECTION_DEFAULTS["threshold"] = 0.9  # read-only: nobody changes the kernel's defaults here
    assert ops.components_connectivity((1.0, 1.0, 1.0)) == 26
    assert ops.components_connectivity((40.0, 4.0, 4.0)) == ops.components_connectivity((1.0, 1.0, 2.0)) == 6
