"""Blockwise maps and detections: blocks are rows, and their results equal the whole-volume ones.

Each test runs on one server (the block machinery issues no SQL of its own beyond DataJoint's):
the suite's time goes to the U-Net and the detectors, which are the same on both.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

from neuropipe import ops
from neuropipe.io.stored import open_stored
from neuropipe.pipeline import pipeline_tables
from neuropipe.worker import run_worker, status

SHAPE = (12, 96, 112)
COMPONENTS = {"method": "components", "threshold": 0.5, "min_voxels": 5, "max_cells": 10_000}
SPHERES = {"method": "spheres", "threshold": 0.3, "stop": 0.4, "sphere_size": 8, "dilation": 2, "max_cells": 10_000}


@pytest.fixture
def chain(pipeline, tmp_path):
    """A synthetic volume with a tiny model, parameter sets, and a block shape that divides nothing."""
    sample = ops.make_sample(SHAPE, seed=3, cell_diameter=12)
    np.savez(tmp_path / "sample.npz", image=sample.image, cells=sample.cells)
    volume, membrane = pipeline.volume, pipeline.membrane
    key = {"dataset": "s"}
    volume.Dataset.insert1(dict(key, source=f"file://{tmp_path}/sample.npz#image"))
    volume.Annotation.insert1(dict(key, kind="cells", purpose="train", source=f"file://{tmp_path}/sample.npz#cells"))
    run_worker(pipeline_tables([volume]), max_idle=0)
    membrane_mask = np.asarray((volume.AnnotationVolume & key).fetch1("membrane"))
    model = ops.train_membrane(sample.image, membrane_mask, iterations=30, width=8, depth=2, crop=48, batch_size=4,
                               precision="float32", progress=False, seed=0)
    training = membrane.TrainingParams.insert_params({"iterations": 30})
    membrane.MembraneModel.insert1(dict(key, **training, model=model.to_bytes(), iterations=30, train_seconds=1.0,
                                        final_loss=0.1, device="cpu"), allow_direct_insert=True)
    inference = membrane.InferenceParams.insert_params({"tile": 48, "overlap": 8, "precision": "float32"})
    volume.Blocking.insert1(dict(blocking_id="small", size_z=5, size_y=40, size_x=48))
    return dict(key=key, model=model, training=training, inference=inference, image=sample.image)


def populate(pipeline):
    return run_worker(pipeline_tables([pipeline.volume, pipeline.membrane, pipeline.detection]), max_idle=0)


def result(table, key, attribute):
    return np.asarray(open_stored((table & key).fetch1(attribute)))


@pytest.mark.parametrize("settings", ["postgresql"], indirect=True)
def test_blockwise_maps_and_components_equal_the_whole_volume(pipeline, chain):
    detection = pipeline.detection
    found = detection.DetectionParams.insert_params(COMPONENTS)
    tally = populate(pipeline)
    assert tally["MembraneBlock"].made == 3 * 3 * 3 + 1 and tally["DetectionBlock"].made == 3 * 3 * 3 + 1
    whole, small = ({**chain["key"], "blocking_id": name} for name in ("default", "small"))
    probability = result(pipeline.membrane.MembraneMap, whole, "probability")
    tiling = pipeline.membrane.MembraneBlock().tiling({**small, **chain["training"], **chain["inference"]})
    assert tiling.seamed and all(tiling.bands)  # each tile computed by one block, seams blended by the map
    np.testing.assert_array_equal(result(pipeline.membrane.MembraneMap, small, "probability"), probability)
    reference = ops.predict_membrane(chain["model"], chain["image"], tile=48, overlap=8, precision="float32")
    np.testing.assert_array_equal(probability, reference)
    means = (pipeline.membrane.MembraneMap & chain["key"]).to_arrays("mean_probability")
    assert means[0] == pytest.approx(means[1], rel=1e-12)

    labels = result(detection.CellDetection, dict(whole, **found), "labels")
    expected = ops.detect_cells(1.0 - probability.astype(np.float64), **COMPONENTS)
    assert labels.max() > 20  # enough objects to cross faces, edges and corners of the small blocks
    np.testing.assert_array_equal(labels, expected.labels)
    np.testing.assert_array_equal(result(detection.CellDetection, dict(small, **found), "labels"), expected.labels)
    cells = (detection.CellDetection.Cell & small).to_dicts(order_by="cell_id")
    np.testing.assert_allclose([[c["centroid_z"], c["centroid_y"], c["centroid_x"]] for c in cells],
                               expected.centroids, atol=1e-9)
    np.testing.assert_allclose([c["score"] for c in cells], expected.scores, atol=1e-9)
    assert [c["voxel_count"] for c in cells] == expected.voxel_counts.tolist()


@pytest.mark.parametrize("settings", ["mysql"], indirect=True)
def test_every_sphere_is_owned_by_one_block(pipeline, chain):
    detection = pipeline.detection
    found = detection.DetectionParams.insert_params(SPHERES)
    populate(pipeline)
    whole, small = ({**chain["key"], "blocking_id": name, **found} for name in ("default", "small"))

    def centroids(key):
        rows = (detection.CellDetection.Cell & key).to_arrays("centroid_z", "centroid_y", "centroid_x")
        return np.stack(rows, axis=1)

    reference, blockwise = centroids(whole), centroids(small)
    assert len(reference) > 10
    distances = np.linalg.norm(blockwise[:, None] - blockwise[None], axis=-1) + np.eye(len(blockwise)) * 99
    assert distances.min() >= 1  # none counted twice
    match = ops.match_centroids(blockwise, reference, radius=2.0)
    assert match.recall >= 0.9 and match.precision >= 0.9, match  # greedy order differs near block faces only
    labels = result(detection.CellDetection, small, "labels")
    assert set(np.unique(labels)) == set(range(len(blockwise) + 1))


@pytest.mark.parametrize("settings", ["postgresql"], indirect=True)
def test_a_model_is_loaded_once_per_stored_version(pipeline, chain):
    models = pipeline.membrane.MembraneModel
    key = {"training_dataset": "s", **chain["training"], "blocking_id": "small"}  # as a block's key names it
    first = models().load(key)
    assert isinstance(first, ops.MembraneModel) and models().load(key) is first  # cached: blocks share it
    assert first.hyperparameters == chain["model"].hyperparameters
    row = (models & chain["key"]).fetch1()
    (models & chain["key"]).delete(prompt=False)  # trained again: stored anew, so loaded anew
    models.insert1(dict(row, model=chain["model"].to_bytes()), allow_direct_insert=True)
    again = models().load(key)
    assert again is not first and again.hyperparameters == first.hyperparameters


@pytest.mark.parametrize("settings", ["mysql"], indirect=True)
def test_status_counts_blocks_and_a_failed_block_is_retried_alone(pipeline, chain, monkeypatch):
    membrane = pipeline.membrane
    original = membrane.MembraneBlock.compute

    def flaky(self, key, data, block):
        if block.index == (1, 1, 1):
            raise ValueError("this block's input is bad")
        return original(self, key, data, block)

    monkeypatch.setattr(membrane.MembraneBlock, "compute", flaky)
    run_worker(pipeline_tables([pipeline.volume, membrane]), max_idle=0)
    progress = {(row["table"], row["dataset"]): row
                for row in status.block_progress(pipeline_tables([pipeline.membrane]))}
    row = progress[("MembraneBlock", "s")]
    assert (row["done"], row["total"], row["error"]) == (27, 28, 1)
    assert not membrane.MembraneMap & {"blocking_id": "small"}  # incomplete: not assembled

    monkeypatch.setattr(membrane.MembraneBlock, "compute", original)
    assert status.retry(pipeline_tables([membrane]), pattern="MembraneBlock") == 1
    tally = run_worker(pipeline_tables([membrane]), max_idle=0)
    assert tally["MembraneBlock"].made == 1 and tally["MembraneMap"].made == 1


@pytest.mark.parametrize("settings", ["postgresql"], indirect=True)
def test_two_worker_processes_racing_on_blocks_make_the_same_map(pipeline, chain, settings, tmp_path):
    """Two worker processes share the blocks, each made once, and the map equals the whole-volume one.

    Each worker may make at most a little over half the blocks (``--max-jobs``), so both must
    take some whichever starts first: the race is staged, not left to start-up timing.
    """
    membrane = pipeline.membrane
    pipeline.volume.Blocking.insert1(dict(blocking_id="tiny", size_z=3, size_y=24, size_x=28))
    run_worker(pipeline_tables([pipeline.volume]), max_idle=0)
    pending = len(membrane.MembraneBlock.key_source - membrane.MembraneBlock)
    assert pending > 4
    env = {**os.environ, "DJ_HOST": settings.host or "", "DJ_PORT": str(settings.port or ""),
           "DJ_USER": settings.user or "", "DJ_PASS": "", "DJ_BACKEND": settings.backend,
           "NEUROPIPE_SCHEMA_PREFIX": settings.schema_prefix, "NEUROPIPE_STORE": str(settings.store)}
    command = [sys.executable, "-m", "neuropipe.cli", "worker", "--tables", "MembraneBlock", "--max-idle", "5",
               "--poll", "0.2", "--heartbeat", "1", "--max-jobs", str(pending // 2 + 1)]
    workers = [subprocess.Popen(command, env=env, stdout=open(tmp_path / f"w{index}.log", "wb"),
                                stderr=subprocess.STDOUT) for index in range(2)]
    assert [worker.wait(timeout=600) for worker in workers] == [0, 0], [
        (tmp_path / f"w{index}.log").read_text()[-2000:] for index in range(2)]
    assert len(membrane.MembraneBlock.key_source - membrane.MembraneBlock) == 0  # the two made every block
    made_by = (membrane.MembraneBlock().jobs & "status = 'success'").to_arrays("pid")
    assert len(made_by) == pending and len(set(made_by)) == 2  # each block once, both workers took blocks
    run_worker(pipeline_tables([membrane]), max_idle=0)
    maps = {name: result(membrane.MembraneMap, {**chain["key"], "blocking_id": name}, "probability")
            for name in ("default", "tiny")}
    np.testing.assert_array_equal(maps["tiny"], maps["default"])  # tiles cross two faces: each block computes all


@pytest.mark.slow
@pytest.mark.parametrize("settings", ["postgresql"], indirect=True)
def test_isbi_2012_blockwise_equals_whole(pipeline, settings, isbi_path, tmp_path):
    """Ten ISBI 2012 slices in 3 x 3 x 2 blocks of (4, 200, 300): the same map and segments as whole."""
    data = np.load(isbi_path)
    np.savez(tmp_path / "isbi.npz", image=data["image"][20:30], membrane=data["membrane"][20:30])
    volume, membrane, detection = pipeline.volume, pipeline.membrane, pipeline.detection
    key = {"dataset": "isbi"}
    volume.Dataset.insert1(dict(key, source=f"file://{tmp_path}/isbi.npz#image", voxel_z_nm=50, voxel_y_nm=4,
                                voxel_x_nm=4))
    volume.Annotation.insert1(dict(key, kind="membrane", purpose="train", source=f"file://{tmp_path}/isbi.npz#membrane"))
    volume.Blocking.insert1(dict(blocking_id="small", size_z=4, size_y=200, size_x=300))
    model = ops.train_membrane(data["image"][:4], data["membrane"][:4] > 0, iterations=40, width=8, depth=2,
                               crop=96, precision="float32", normalise="slice", progress=False, seed=0)
    training = membrane.TrainingParams.insert_params({"iterations": 40})
    run_worker(pipeline_tables([volume]), max_idle=0)
    membrane.MembraneModel.insert1(dict(key, **training, model=model.to_bytes(), iterations=40, train_seconds=1.0,
                                        final_loss=0.1, device="cpu"), allow_direct_insert=True)
    membrane.InferenceParams.insert_params({"tile": 128, "overlap": 16, "precision": "float32"})
    found = detection.DetectionParams.insert_params(COMPONENTS)
    tally = populate(pipeline)
    assert tally["MembraneBlock"].made == 3 * 3 * 2 + 1
    whole, small = ({**key, "blocking_id": name} for name in ("default", "small"))
    probability = result(membrane.MembraneMap, whole, "probability")
    reference = ops.predict_membrane(model, data["image"][20:30], tile=128, overlap=16, precision="float32")
    np.testing.assert_array_equal(probability, reference)
    np.testing.assert_array_equal(result(membrane.MembraneMap, small, "probability"), probability)
    expected = ops.detect_cells(1.0 - probability.astype(np.float64), voxel_size=(50, 4, 4), **COMPONENTS)
    assert expected.count > 100  # neurite cross-sections, labelled plane by plane
    for blocking in (whole, small):
        np.testing.assert_array_equal(result(detection.CellDetection, dict(blocking, **found), "labels"),
                                      expected.labels)
