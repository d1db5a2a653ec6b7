"""Export: results written to Boss channels, precomputed layers and zarr arrays as jobs of the graph."""

import numpy as np
import pytest
import tensorstore
import zarr
from boss_server import BossServer

from neuropipe.errors import BadInputError
from neuropipe.io import read_volume
from neuropipe.pipeline import pipeline_tables
from neuropipe.worker import run_worker

SHAPE = (4, 40, 48)
BOX = "10:14,100:140,200:248"  # the dataset's box in its source: exports land there


@pytest.fixture
def results(pipeline, tmp_path):
    """A dataset with one membrane map and one detection, made by the workers from a tiny model."""
    from neuropipe import ops
    from neuropipe.io.stored import open_stored

    rng = np.random.default_rng(5)
    raw = rng.integers(0, 255, size=(16, 150, 260), dtype=np.uint8)
    np.save(tmp_path / "raw.npy", raw)
    volume, membrane, detection = pipeline.volume, pipeline.membrane, pipeline.detection
    key = dict(dataset="d")
    volume.Dataset.insert1(dict(key, source=f"file://{tmp_path}/raw.npy", bbox=BOX, voxel_z_nm=30.0,
                                voxel_y_nm=4.0, voxel_x_nm=4.0))
    np.save(tmp_path / "membrane.npy", (raw > 128).astype(np.uint8))
    volume.Annotation.insert1(dict(key, kind="membrane", purpose="train", source=f"file://{tmp_path}/membrane.npy",
                                   bbox=BOX))
    model = ops.train_membrane(raw[:4, :32, :32], raw[:4, :32, :32] > 128, iterations=1, width=4, depth=2, crop=16,
                               batch_size=2, precision="float32", progress=False)
    training = membrane.TrainingParams.insert_params({"iterations": 1})
    run_worker(pipeline_tables([volume]), max_idle=0)
    membrane.MembraneModel.insert1(dict(key, **training, model=model.to_bytes(), iterations=1, train_seconds=1.0,
                                        final_loss=0.1, device="cpu"), allow_direct_insert=True)
    membrane.InferenceParams.insert_params({"tile": 64, "precision": "float32"})
    found = detection.DetectionParams.insert_params({"method": "components", "threshold": 0.5, "min_voxels": 1})
    run_worker(pipeline_tables([membrane, detection]), max_idle=0)
    map_key = (membrane.MembraneMap & key).fetch1("KEY")
    cells_key = dict(map_key, **found)
    probability = np.asarray(open_stored((membrane.MembraneMap & map_key).fetch1("probability")))
    labels = np.asarray(open_stored((detection.CellDetection & cells_key).fetch1("labels")))
    assert probability.shape == labels.shape == SHAPE and labels.max() > 0
    return dict(key=map_key, probability=probability, labels=labels)


def export(pipeline):
    return run_worker(pipeline_tables([pipeline.export]), max_idle=0)


def boss_settings(monkeypatch, server):
    for variable, value in {"NEUROPIPE_BOSS_HOST": server.host, "NEUROPIPE_BOSS_PROTOCOL": "http",
                            "NEUROPIPE_BOSS_TOKEN": server.token}.items():
        monkeypatch.setenv(variable, value)


def test_results_go_to_zarr_and_precomputed_at_the_dataset_box(pipeline, results, tmp_path):
    targets = pipeline.export.ExportTarget
    targets.insert([dict(dataset="d", target="zarr-map", content="probability",
                         uri=f"file://{tmp_path}/out.zarr#maps/{{inference_id}}"),
                    dict(dataset="d", target="layer-cells", content="labels", uri=f"precomputed://file://{tmp_path}/cells")])
    tally = export(pipeline)
    assert tally["ProbabilityExport"].made == 1 and tally["LabelExport"].made == 1
    inference_id = results["key"]["inference_id"]
    row = (pipeline.export.ProbabilityExport & results["key"]).fetch1()
    assert row["uri"] == f"file://{tmp_path}/out.zarr#maps/{inference_id}" and row["dtype"] == "float32"
    assert row["megabytes"] == pytest.approx(results["probability"].nbytes / 1e6)
    written = zarr.open_array(store=str(tmp_path / "out.zarr"), path=f"maps/{inference_id}", mode="r")
    np.testing.assert_array_equal(written[...], results["probability"])
    assert written.attrs["neuropipe"]["offset_zyx"] == [10, 100, 200]
    layer = f"precomputed://file://{tmp_path}/cells"
    np.testing.assert_array_equal(read_volume(layer, BOX), results["labels"])
    info = tensorstore.open({"driver": "neuroglancer_precomputed", "kvstore": f"file://{tmp_path}/cells/"}).result()
    assert info.schema.dtype.name == "uint32" and [u.multiplier for u in info.schema.dimension_units[:3]] == [4, 4, 30]
    # Done once: a second pass writes nothing more.
    assert export(pipeline)["LabelExport"].made == 0


@pytest.mark.parametrize("settings", ["postgresql"], indirect=True)
def test_results_go_to_boss_channels_created_with_the_right_dtype(pipeline, results, monkeypatch):
    with BossServer() as server:
        boss_settings(monkeypatch, server)
        raw = np.zeros((16, 150, 260), np.uint8)
        server.add_channel("lab", "exp", "em", raw, voxel_size=(30, 4, 4))
        old = np.full((16, 150, 260), 9, np.uint64)
        server.add_channel("lab", "exp", "stale", old, channel_type="annotation")
        pipeline.export.ExportTarget.insert([
            dict(dataset="d", target="map", content="probability", uri="bossdb://lab/exp/membrane_{inference_id}"),
            dict(dataset="d", target="cells", content="labels", uri="bossdb://lab/exp/cells"),
            dict(dataset="d", target="over", content="labels", uri="bossdb://lab/exp/stale")])
        monkeypatch.setattr("neuropipe.io.boss.BLOCK_ZYX", (2, 16, 32))  # several blocks per push
        tally = export(pipeline)
        assert tally["ProbabilityExport"].made == 1 and tally["LabelExport"].made == 2
        remote = server.remote()
        channel_name = f"membrane_{results['key']['inference_id']}"
        channel = remote.get_channel(channel_name, "lab", "exp")
        assert (channel.type, channel.datatype) == ("image", "uint8")
        pushed = server.array("lab", "exp", channel_name)[10:14, 100:140, 200:248]
        np.testing.assert_array_equal(pushed, np.rint(results["probability"] * 255).astype(np.uint8))
        cells = remote.get_channel("cells", "lab", "exp")
        assert (cells.type, cells.datatype, cells.sources) == ("annotation", "uint64", [])
        np.testing.assert_array_equal(server.array("lab", "exp", "cells")[10:14, 100:140, 200:248], results["labels"])
        stale = server.array("lab", "exp", "stale")
        np.testing.assert_array_equal(stale[10:14, 100:140, 200:248], results["labels"])  # zeros overwrite too
        assert stale[0, 0, 0] == 9 and stale[10:14, 100:140, 248:].min() == 9
    row = (pipeline.export.LabelExport & {"target": "cells"}).fetch1()
    assert (row["uri"], row["dtype"]) == ("bossdb://lab/exp/cells", "uint64")


@pytest.mark.parametrize("settings", ["mysql"], indirect=True)
def test_a_new_annotation_channel_in_the_dataset_experiment_names_its_image_channel(pipeline, results,
                                                                                    monkeypatch):
    with BossServer() as server:
        boss_settings(monkeypatch, server)
        server.add_channel("lab", "exp", "em", np.ones((16, 150, 260), np.uint8), voxel_size=(30, 4, 4))
        pipeline.volume.Dataset.update1(dict(dataset="d", source="bossdb://lab/exp/em"))
        pipeline.export.ExportTarget.insert1(dict(dataset="d", target="cells", content="labels",
                                                  uri="bossdb://lab/exp/cells"))
        export(pipeline)
        assert server.remote().get_channel("cells", "lab", "exp").sources == ["em"]


@pytest.mark.parametrize(
    "row, message",
    [
        (dict(content="labels", uri="file:///out/cells.npy"), "cannot write npy files"),
        (dict(content="labels", uri="ftp://host/cells.zarr"), "unsupported scheme 'ftp'"),
        (dict(content="probability", uri="bossdb://lab/exp/map_{detection_id}"), "names detection_id"),
        (dict(content="probability", uri="bossdb://lab/exp/map_{inference_id"), "unbalanced braces"),
        (dict(content="labels", uri="bossdb://lab/exp/cells?resolution=1"), "written at resolution 0"),
        (dict(content="meshes", uri="bossdb://lab/exp/cells"), "content must be one of"),
    ],
)
def test_malformed_targets_are_refused_at_insert(pipeline, tmp_path, row, message):
    pipeline.volume.Dataset.insert1(dict(dataset="d", source=f"file://{tmp_path}/raw.npy"))
    with pytest.raises(BadInputError, match=message):
        pipeline.export.ExportTarget.insert1(dict(dataset="d", target="t", **row))
    assert len(pipeline.export.ExportTarget()) == 0


@pytest.mark.parametrize("settings", ["mysql"], indirect=True)
def test_targets_that_cannot_take_the_result_fail_in_the_job_table(pipeline, results, tmp_path, monkeypatch):
    zarr.create_array(store=str(tmp_path / "float.zarr"), shape=(4, 40, 48), dtype="float32")
    with BossServer() as server:
        boss_settings(monkeypatch, server)
        server.add_channel("lab", "exp", "em", np.zeros((16, 150, 260), np.uint8))
        server.add_channel("lab", "exp", "ids", np.zeros((16, 150, 260), np.uint64), channel_type="annotation")
        server.add_channel("lab", "tiny", "em", np.zeros((4, 40, 48), np.uint8))
        targets = {
            "float": ("labels", f"file://{tmp_path}/float.zarr", "holds float32; labels need an integer target"),
            "ids": ("probability", "bossdb://lab/exp/ids", "a probability map needs a float, uint8 or uint16"),
            "nochannel": ("probability", "bossdb://lab/exp/missing", "no such channel (set create"),
            "noexperiment": ("labels", "bossdb://lab/nope/cells", "no such collection, experiment or channel"),
            "outside": ("labels", "bossdb://lab/tiny/cells", "reaches outside the coordinate frame"),
        }
        pipeline.export.ExportTarget.insert([dict(dataset="d", target=name, content=content, uri=uri,
                                                  create=name != "nochannel")
                                             for name, (content, uri, _) in targets.items()])
        export(pipeline)
        assert "missing" not in [name for name in server.remote().list_channels("lab", "exp")]
    for name, (content, _, message) in targets.items():
        table = pipeline.export.ProbabilityExport if content == "probability" else pipeline.export.LabelExport
        job = (table().jobs & {"target": name}).fetch1()
        assert job["status"] == "error" and message in job["error_message"], (name, job["error_message"])
        assert server.token not in job["error_message"] + job["error_stack"]
    assert len(pipeline.export.ProbabilityExport()) == len(pipeline.export.LabelExport()) == 0


def test_two_results_are_not_written_to_one_place(pipeline, results, tmp_path):
    membrane = pipeline.membrane
    membrane.InferenceParams.insert_params({"tile": 48, "precision": "float32"})
    run_worker(pipeline_tables([membrane]), max_idle=0)
    assert len(membrane.MembraneMap()) == 2
    pipeline.export.ExportTarget.insert1(dict(dataset="d", target="one", content="probability",
                                              uri=f"file://{tmp_path}/one.zarr"))
    tally = export(pipeline)
    assert tally["ProbabilityExport"].made == 1 and tally["ProbabilityExport"].failed == 1
    message = (pipeline.export.ProbabilityExport().jobs & {"status": "error"}).fetch1("error_message")
    assert "that place already holds the export of" in message and "{inference_id}" in message
