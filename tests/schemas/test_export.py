"""Export: results written to Boss channels, precomputed layers and zarr arrays as jobs of the graph."""

import numpy as np
import pytest
import tensorstore
import zarr
from boss_server import BossServer

from neuropipe.errors import BadInputError
from neuropipe.io import read_volume
from neuropipe.worker import pipeline_tables, run_worker

SHAPE = (4, 40, 48)
BOX = "10:14,100:140,200:248"  # the dataset's box in its source: exports land there


@pytest.fixture
def results(pipeline, tmp_path):
    """A dataset with one membrane map and one detection, inserted as a worker would have made them."""
    rng = np.random.default_rng(5)
    probability = rng.random(SHAPE, dtype=np.float32)
    labels = np.zeros(SHAPE, np.uint32)
    labels[1:3, 5:15, 5:15], labels[0:4, 20:30, 30:40] = 1, 2
    np.save(tmp_path / "raw.npy", rng.integers(0, 255, size=(16, 150, 260), dtype=np.uint8))
    volume, membrane, detection = pipeline.volume, pipeline.membrane, pipeline.detection
    key = dict(dataset="d")
    volume.Dataset.insert1(dict(key, source=f"file://{tmp_path}/raw.npy", bbox=BOX, voxel_z_nm=30.0,
                                voxel_y_nm=4.0, voxel_x_nm=4.0))
    volume.Volume.insert1(dict(key, image=np.zeros(SHAPE, np.uint8), depth=4, height=40, width=48, dtype="uint8",
                               intensity_min=0, intensity_max=1, intensity_mean=0.5), allow_direct_insert=True)
    volume.Annotation.insert1(dict(key, kind="cells", purpose="train", source=f"file://{tmp_path}/raw.npy"))
    volume.AnnotationVolume.insert1(dict(key, membrane=labels == 0, cells=labels, cell_count=2, membrane_fraction=0.5),
                                    allow_direct_insert=True)
    training = membrane.TrainingParams.insert_params({"iterations": 1})
    membrane.MembraneModel.insert1(dict(key, **training, model=b"weights", iterations=1, train_seconds=1.0,
                                        final_loss=0.1, device="cpu"), allow_direct_insert=True)
    inference = membrane.InferenceParams.insert_params({"tile": 64})
    map_key = dict(key, training_dataset="d", **training, **inference)
    membrane.MembraneMap.insert1(dict(map_key, probability=probability, mean_probability=0.5),
                                 allow_direct_insert=True)
    found = detection.DetectionParams.insert_params({"threshold": 0.5})
    detection.CellDetection.insert1(dict(map_key, **found, labels=labels, cell_count=2), allow_direct_insert=True)
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
def test_malformed_targets_are_refused_at_insert(pipeline, results, row, message):
    with pytest.raises(BadInputError, match=message):
        pipeline.export.ExportTarget.insert1(dict(dataset="d", target="t", **row))
    assert len(pipeline.export.ExportTarget()) == 0


def test_targets_that_cannot_take_the_result_fail_in_the_job_table(pipeline, results, tmp_path, monkeypatch):
    zarr.create_array(store=str(tmp_path / "small.zarr"), shape=(4, 40, 48), dtype="uint8")
    zarr.create_array(store=str(tmp_path / "float.zarr"), shape=(4, 40, 48), dtype="float32")
    wide = results["labels"].copy()
    wide[0, 0, 0] = 300
    key = (pipeline.detection.CellDetection & results["key"]).fetch1("KEY")
    pipeline.detection.CellDetection.update1(dict(key, labels=wide))
    with BossServer() as server:
        boss_settings(monkeypatch, server)
        server.add_channel("lab", "exp", "em", np.zeros((16, 150, 260), np.uint8))
        server.add_channel("lab", "exp", "ids", np.zeros((16, 150, 260), np.uint64), channel_type="annotation")
        server.add_channel("lab", "tiny", "em", np.zeros((4, 40, 48), np.uint8))
        targets = {
            "small": ("labels", f"file://{tmp_path}/small.zarr", "holds uint8 (at most 255); the labels reach 300"),
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
    other = membrane.InferenceParams.insert_params({"tile": 32})
    second = dict(results["key"], **other)
    membrane.MembraneMap.insert1(dict(second, probability=results["probability"] / 2, mean_probability=0.25),
                                 allow_direct_insert=True)
    pipeline.export.ExportTarget.insert1(dict(dataset="d", target="one", content="probability",
                                              uri=f"file://{tmp_path}/one.zarr"))
    tally = export(pipeline)
    assert tally["ProbabilityExport"].made == 1 and tally["ProbabilityExport"].failed == 1
    message = (pipeline.export.ProbabilityExport().jobs & {"status": "error"}).fetch1("error_message")
    assert "that place already holds the export of" in message and "{inference_id}" in message
