"""Importing volumes and annotations; bad input recorded in the job table, nothing partial stored."""

import numpy as np
import pytest

from neuropipe.errors import BadInputError
from neuropipe.pipeline import pipeline_tables
from neuropipe.worker import run_worker


def drain(module):
    """Populate the tables of ``module`` once through the worker loop; return the tallies."""
    return run_worker(pipeline_tables([module]), max_idle=0)


@pytest.fixture
def stack(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, size=(6, 32, 40), dtype=np.uint8)
    cells = np.zeros(image.shape, np.uint16)
    cells[1:5, 2:10, 2:10] = 7
    cells[1:5, 20:30, 20:35] = 9
    path = tmp_path / "stack.npz"
    np.savez(path, image=image, cells=cells)
    return path, image, cells


def test_volume_and_annotation_are_imported_into_the_store(pipeline, stack):
    path, image, cells = stack
    volume = pipeline.volume
    volume.Dataset.insert1(dict(dataset="d", source=f"file://{path}#image", bbox="1:6,0:32,0:40"))
    volume.Annotation.insert1(dict(dataset="d", kind="cells", purpose="evaluate", source=f"file://{path}#cells",
                                   bbox="1:6,0:32,0:40"))
    drain(volume)
    row = (volume.Volume & {"dataset": "d"}).fetch1()
    np.testing.assert_array_equal(np.asarray(row["image"]), image[1:])
    assert (row["depth"], row["height"], row["width"]) == (5, 32, 40)
    annotation = (volume.AnnotationVolume & {"dataset": "d"}).fetch1()
    assert annotation["cell_count"] == 2
    np.testing.assert_array_equal(np.asarray(annotation["membrane"]), cells[1:] == 0)
    centroids = sorted(volume.AnnotationVolume.Cell.to_arrays("centroid_y"))
    assert centroids == pytest.approx([5.5, 24.5])
    jobs = volume.Volume().jobs & {"dataset": "d"}
    assert jobs.fetch1("status") == "success"


@pytest.mark.parametrize(
    "source, bbox, message",
    [
        ("file:///nonexistent/stack.npy", None, "does not exist"),
        ("STACK#image", "0:6,0:64,0:40", "reaches outside"),
        ("STACK#nothing", None, "no array 'nothing'"),
        ("NANS", None, "NaN or infinite"),
        ("FLAT", None, "the volume is constant"),
    ],
)
def test_bad_input_is_recorded_in_the_job_table(pipeline, stack, tmp_path, source, bbox, message):
    path = stack[0]
    np.save(tmp_path / "nans.npy", np.full((2, 4, 4), np.nan, np.float32))
    np.save(tmp_path / "flat.npy", np.zeros((2, 4, 4), np.uint8))
    source = (source.replace("STACK", f"file://{path}").replace("NANS", f"file://{tmp_path}/nans.npy")
              .replace("FLAT", f"file://{tmp_path}/flat.npy"))
    volume = pipeline.volume
    volume.Dataset.insert1(dict(dataset="good", source=f"file://{path}#image"))
    volume.Dataset.insert1(dict(dataset="bad", source=source, bbox=bbox))
    tally = drain(volume)
    assert tally["Volume"].made == 1 and tally["Volume"].failed == 1
    assert len(volume.Volume()) == 1 and volume.Volume & {"dataset": "good"}
    error = (volume.Volume().jobs & {"dataset": "bad"}).fetch1()
    assert error["status"] == "error"
    assert "BadInputError" in error["error_message"] and message in error["error_message"]


@pytest.mark.parametrize(
    "row, message",
    [
        (dict(source="bossdb://lab/coll"), "bossdb://collection/experiment/channel"),
        (dict(source="gs://bucket/volume.zarr"), "unsupported scheme 'gs'"),
        (dict(source="file:///data/x.n5"), "'.n5' are not supported"),
        (dict(source="file:///data/x.zarr?level=1"), "unknown query parameter"),
        (dict(source="file:///data/x.npy", bbox="0:10,0:10"), "three ranges"),
    ],
)
def test_malformed_rows_are_refused_at_insert(pipeline, row, message):
    with pytest.raises(BadInputError, match=message):
        pipeline.volume.Dataset.insert1(dict(dataset="x", **row))
    assert len(pipeline.volume.Dataset()) == 0


def test_annotation_of_another_shape_is_an_error(pipeline, stack):
    path = stack[0]
    volume = pipeline.volume
    volume.Dataset.insert1(dict(dataset="d", source=f"file://{path}#image"))
    volume.Annotation.insert1(dict(dataset="d", kind="cells", purpose="train", source=f"file://{path}#cells",
                                   bbox="0:2,0:32,0:40"))
    drain(volume)
    assert len(volume.AnnotationVolume()) == 0 and len(volume.AnnotationVolume.Cell()) == 0
    message = (volume.AnnotationVolume().jobs & {"dataset": "d"}).fetch1("error_message")
    assert "has shape (2, 32, 40), the volume (6, 32, 40)" in message


def test_chunked_sources_import_only_their_box_with_the_voxel_size_of_their_metadata(pipeline, tmp_path):
    import zarr
    from volume_files import write_precomputed

    image = np.random.default_rng(1).integers(1, 255, size=(8, 40, 48), dtype=np.uint8)
    group = zarr.open_group(str(tmp_path / "img.ome.zarr"), mode="w")
    group.create_array("0", data=image, chunks=(4, 16, 16))
    group.attrs["ome"] = {"multiscales": [{"version": "0.5", "axes": [
        {"name": name, "type": "space", "unit": "micrometer"} for name in "zyx"], "datasets": [
        {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [0.03, 0.006, 0.006]}]}]}]}
    layer = write_precomputed(tmp_path / "layer", image, offset_xyz=(1000, 2000, 30), chunk_xyz=(16, 16, 4))
    volume = pipeline.volume
    volume.Dataset.insert([dict(dataset="ome", source=f"file://{tmp_path}/img.ome.zarr", bbox="2:6,8:40,0:24"),
                           dict(dataset="layer", source=layer, bbox="32:36,2008:2040,1000:1024"),
                           dict(dataset="given", source=layer, bbox=None,
                                voxel_z_nm=45.0, voxel_y_nm=5.0, voxel_x_nm=5.0)])
    assert volume.Dataset.voxel_size({"dataset": "ome"}) == pytest.approx((30.0, 6.0, 6.0))
    assert volume.Dataset.voxel_size({"dataset": "layer", "other": "fields"}) == (40.0, 4.0, 4.0)
    assert volume.Dataset.voxel_size({"dataset": "given"}) == (45.0, 5.0, 5.0)
    drain(volume)
    for name in ("ome", "layer"):
        np.testing.assert_array_equal(np.asarray((volume.Volume & {"dataset": name}).fetch1("image")),
                                      image[2:6, 8:40, 0:24], err_msg=name)


def test_a_boss_channel_is_imported_with_its_voxel_size(pipeline, monkeypatch):
    from boss_server import BossServer

    image = np.random.default_rng(2).integers(1, 255, size=(6, 30, 40), dtype=np.uint8)
    with BossServer() as server:
        monkeypatch.setenv("NEUROPIPE_BOSS_HOST", server.host)
        monkeypatch.setenv("NEUROPIPE_BOSS_PROTOCOL", "http")
        monkeypatch.setenv("NEUROPIPE_BOSS_TOKEN", server.token)
        server.add_channel("lab", "exp", "em", image, voxel_size=(40, 4, 4), offset_zyx=(10, 0, 0))
        volume = pipeline.volume
        volume.Dataset.insert1(dict(dataset="boss", source="bossdb://lab/exp/em", bbox="11:15,5:25,0:40"))
        volume.Dataset.insert1(dict(dataset="missing", source="bossdb://lab/exp/nope"))
        assert (volume.Dataset & {"dataset": "boss"}).fetch1("voxel_z_nm", "voxel_x_nm") == (40.0, 4.0)
        drain(volume)
    np.testing.assert_array_equal(np.asarray((volume.Volume & {"dataset": "boss"}).fetch1("image")),
                                  image[1:5, 5:25])
    error = (volume.Volume().jobs & {"dataset": "missing"}).fetch1()
    assert error["status"] == "error" and "no such collection, experiment or channel" in error["error_message"]
    assert server.token not in error["error_message"] + error["error_stack"]


def test_a_large_volume_is_stored_as_zarr_read_from_its_source_block_by_block(pipeline, tmp_path, monkeypatch):
    import zarr

    from neuropipe.io import stored

    image = np.random.default_rng(3).integers(1, 255, size=(10, 40, 48), dtype=np.uint8)
    zarr.create_array(store=str(tmp_path / "big.zarr"), data=image, chunks=(4, 16, 16))
    reads = []
    original = stored.copy_in_blocks
    monkeypatch.setattr(stored, "copy_in_blocks", lambda read, *args, **kwargs: original(
        lambda part: reads.append(part) or read(part), *args, **kwargs))
    monkeypatch.setattr(stored, "COPY_BLOCK", (4, 16, 32))
    monkeypatch.setattr(stored, "ZARR_CHUNKS", (4, 16, 16))
    monkeypatch.setenv("NEUROPIPE_ZARR_ABOVE_MB", "0.01")  # 10 kB: this 12 kB box goes to zarr
    volume = pipeline.volume
    volume.Dataset.insert([dict(dataset="big", source=f"file://{tmp_path}/big.zarr", bbox="1:9,4:36,0:48"),
                           dict(dataset="small", source=f"file://{tmp_path}/big.zarr", bbox="0:2,0:8,0:8")])
    drain(volume)
    row = (volume.Volume & {"dataset": "big"}).fetch1()
    part = image[1:9, 4:36]
    assert row["image"] is None and (row["depth"], row["height"], row["width"]) == part.shape
    assert (row["intensity_min"], row["intensity_max"]) == (part.min(), part.max())
    assert row["intensity_mean"] == pytest.approx(part.mean())
    assert len(reads) == 2 * 2 * 2 and max(np.prod([s.stop - s.start for s in box]) for box in reads) == 4 * 16 * 32
    stored_image = volume.Volume.open_image({"dataset": "big"})
    assert stored_image.chunks == (4, 16, 16)
    np.testing.assert_array_equal(stored_image[2:5, 10:20, 7:9], part[2:5, 10:20, 7:9])
    np.testing.assert_array_equal(np.asarray(stored_image), part)
    assert (volume.Volume & {"dataset": "small"}).fetch1("image_zarr") is None
    np.testing.assert_array_equal(volume.Volume.open_image({"dataset": "small"}), image[0:2, 0:8, 0:8])


def test_a_failed_zarr_import_leaves_no_row_and_no_file(pipeline, settings, tmp_path, monkeypatch):
    image = np.random.default_rng(4).random((6, 16, 16)).astype(np.float32)
    image[5, 3, 3] = np.nan  # in the last block read
    np.save(tmp_path / "nan.npy", image)
    from neuropipe.io import stored

    monkeypatch.setattr(stored, "COPY_BLOCK", (2, 16, 16))
    monkeypatch.setenv("NEUROPIPE_ZARR_ABOVE_MB", "0")
    volume = pipeline.volume
    volume.Dataset.insert1(dict(dataset="nan", source=f"file://{tmp_path}/nan.npy"))
    drain(volume)
    assert len(volume.Volume()) == 0
    message = (volume.Volume().jobs & {"dataset": "nan"}).fetch1("error_message")
    assert "1 of 512 voxels are NaN or infinite (reading block" in message
    assert not [path for path in settings.store.rglob("*") if path.is_file()]


def test_a_connection_dropped_mid_download_is_retried_then_reported(pipeline, monkeypatch):
    from boss_server import BossServer

    from neuropipe.io import boss

    image = np.random.default_rng(5).integers(1, 255, size=(4, 30, 40), dtype=np.uint8)
    monkeypatch.setattr(boss, "ATTEMPTS", 2)
    monkeypatch.setattr(boss, "BLOCK_ZYX", (4, 16, 16))  # 2 x 3 blocks, one at a time: faults hit the first
    monkeypatch.setattr(boss, "THREADS", 1)
    with BossServer() as server:
        for variable, value in {"NEUROPIPE_BOSS_HOST": server.host, "NEUROPIPE_BOSS_PROTOCOL": "http",
                                "NEUROPIPE_BOSS_TOKEN": server.token}.items():
            monkeypatch.setenv(variable, value)
        server.add_channel("lab", "exp", "em", image)
        volume = pipeline.volume
        volume.Dataset.insert1(dict(dataset="flaky", source="bossdb://lab/exp/em"))
        server.fail_next(2, "drop")  # one block dropped twice: the job fails once, its retry succeeds
        serve = dict(max_idle=1, poll=0.1, max_retries=1, retry_backoff=0.1)  # waits for the retries
        first = run_worker(pipeline_tables([volume]), **serve)
        volume.Dataset.insert1(dict(dataset="gone", source="bossdb://lab/exp/em"))
        server.fail_next(50, "drop")  # every try of both attempts
        second = run_worker(pipeline_tables([volume]), **serve)
    assert first["Volume"].made == 1 and second["Volume"].failed == 1
    np.testing.assert_array_equal(volume.Volume.open_image({"dataset": "flaky"}), image)
    from neuropipe.worker import registry

    failures = (registry.Failure & {"table_name": volume.Volume.full_table_name}).to_dicts()
    assert sorted((row["job_key"]["dataset"], row["kind"]) for row in failures) == \
        [("flaky", "transient"), ("gone", "transient"), ("gone", "transient")]
    job = (volume.Volume().jobs & {"dataset": "gone"}).fetch1()
    assert job["status"] == "error" and len(volume.Volume & {"dataset": "gone"}) == 0
    assert "the Boss server failed 2 times in a row" in job["error_message"]
    assert server.token not in job["error_message"] + job["error_stack"]
