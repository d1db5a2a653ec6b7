"""The learned nuclei option: centre maps, the 3-D U-Net, and detection from its maps."""

import numpy as np
import pytest

from neuropipe import ops
from neuropipe.ops._network3d import pool_factors


@pytest.fixture(scope="module")
def packed():
    """Touching nuclei with no seam between them (the regime unsupervised maps merge)."""
    return ops.make_nuclei((32, 64, 64), seed=3, packing=0.7, density=0.4)


@pytest.fixture(scope="module")
def trained(packed):
    return ops.train_nuclei(packed.image, packed.nuclei, iterations=60, width=8, crop=32, progress=False)


def test_centre_map_is_one_at_each_centre_and_zero_where_nuclei_touch():
    cells = np.zeros((9, 9, 16), np.uint32)
    cells[:, :, :8], cells[:, :, 8:] = 1, 2  # two boxes sharing a face at x = 7 | 8, cut by every border
    cells[0], cells[-1], cells[:, 0], cells[:, -1] = 0, 0, 0, 0

    centres = ops.centre_map(cells)

    assert centres[cells == 0].max() == 0.0
    assert centres[:, :, 7].max() == centres[:, :, 8].max() == 0.0  # the shared face is a boundary
    for label in (1, 2):
        assert centres[cells == label].max() == pytest.approx(1.0)
    assert centres[4, 4, 3] > centres[4, 4, 6] > 0  # falls towards the face
    assert centres[4, 4, 0] == pytest.approx(1.0)  # the volume border is no boundary


def test_centre_map_measures_distance_in_physical_units():
    cells = np.zeros((9, 9, 9), np.uint32)
    cells[1:8, 1:8, 1:8] = 1
    thick = ops.centre_map(cells, voxel_size=(3.0, 1.0, 1.0))
    assert thick[2, 4, 4] == pytest.approx(1.0)  # one thick section from the face is as deep as it gets
    assert ops.centre_map(cells)[2, 4, 4] < 1.0


def test_pooling_halves_thin_axes_first():
    assert pool_factors((1, 1, 1), 2) == [(2, 2, 2), (2, 2, 2)]
    assert pool_factors((4, 1, 1), 3) == [(1, 2, 2), (1, 2, 2), (2, 2, 2)]


def test_learned_detection_on_true_maps_separates_touching_nuclei(packed):
    truth_centres = ops.centre_map(packed.nuclei)
    foreground = (packed.nuclei > 0).astype(float)

    found = ops.detect_cells(foreground, centres=truth_centres, method="learned", threshold=0.5, stop=0.5,
                             sphere_size=10, max_cells=1000)
    merged = ops.detect_cells(foreground, method="components", threshold=0.5, max_cells=1000)

    learned = ops.match_centroids(found.centroids, packed.centroids, radius=5)
    assert learned.f1 > 0.97, learned
    assert found.count > 1.5 * merged.count  # the same mask as one component per cluster
    assert found.labels.max() == found.count and (found.labels > 0).sum() == found.voxel_counts.sum()


def test_a_trained_model_sees_nuclei_and_survives_serialisation(packed, trained):
    maps = ops.predict_nuclei(trained, packed.image)

    assert maps.foreground.shape == maps.centres.shape == packed.image.shape
    inside = packed.nuclei > 0
    assert maps.foreground[inside].mean() > maps.foreground[~inside].mean() + 0.3
    assert maps.centres[ops.centre_map(packed.nuclei) > 0.7].mean() > maps.centres[inside].mean()
    assert trained.iterations == 60 and np.isfinite(trained.final_loss) and trained.final_loss < trained.history[0]

    restored = ops.NucleiModel.from_bytes(trained.to_bytes())
    again = ops.predict_nuclei(restored, packed.image)
    np.testing.assert_array_equal(again.foreground, maps.foreground)
    assert restored.hyperparameters == trained.hyperparameters


def test_tiles_barely_show_in_the_maps(packed, trained):
    image = packed.image[:, :45, :50]  # sides that are not multiples of the pooling
    whole = ops.predict_nuclei(trained, image, tile=96)
    tiled = ops.predict_nuclei(trained, image, tile=40)
    assert whole.foreground.shape == image.shape
    assert np.abs(whole.foreground - tiled.foreground).max() < 0.02
    assert np.abs(whole.centres - tiled.centres).max() < 0.02


def test_thick_sections_are_pooled_in_plane_first():
    sample = ops.make_nuclei((12, 40, 40), seed=1, voxel_size=(2.0, 1.0, 1.0))
    model = ops.train_nuclei(sample.image, sample.nuclei, voxel_size=sample.voxel_size, iterations=2, width=4,
                             crop=16, progress=False)
    assert model.hyperparameters["factors"] == [[1, 2, 2], [2, 2, 2]] and model.multiple == (2, 4, 4)
    assert model.hyperparameters["crop"] == [8, 16, 16]
    assert ops.predict_nuclei(model, sample.image).centres.shape == sample.image.shape


@pytest.mark.parametrize("change, message", [
    (dict(cells=np.zeros((8, 16, 16), np.uint16)), "at least one nucleus"),
    (dict(cells=np.ones((8, 16, 15), np.uint16)), "shape"),
    (dict(cells=np.ones((8, 16, 16), np.float32)), "integer labels"),
    (dict(image=np.full((8, 16, 16), 7.0)), "constant"),
    (dict(image=np.full((8, 16, 16), np.nan)), "NaN"),
    (dict(iterations=None), "iterations and/or minutes"),
    (dict(crop=0), "crop"),
])
def test_bad_training_input_is_refused(change, message):
    rng = np.random.default_rng(0)
    arguments = dict(image=rng.random((8, 16, 16)), cells=np.ones((8, 16, 16), np.uint16), iterations=1,
                     progress=False)
    with pytest.raises(ValueError, match=message):
        ops.train_nuclei(**{**arguments, **change})


def test_learned_detection_needs_its_centre_map_and_only_it_takes_one():
    prob = np.zeros((8, 8, 8))
    with pytest.raises(ValueError, match="centres"):
        ops.detect_cells(prob, method="learned")
    with pytest.raises(ValueError, match="centres"):
        ops.detect_cells(prob, method="blobs", centres=prob)
    with pytest.raises(ValueError, match="centres must lie in"):
        ops.detect_cells(prob, method="learned", centres=prob + 2)
    with pytest.raises(ValueError, match="shape"):
        ops.detect_cells(prob, method="learned", centres=prob[:4])
    with pytest.raises(ValueError, match="not a serialised NucleiModel"):
        ops.NucleiModel.from_bytes(b"not a model")
    assert ops.detect_cells(prob, method="learned", centres=prob).count == 0
