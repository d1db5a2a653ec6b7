"""The store of arrays: a directory or an object store (S3 on a local moto server), end to end."""

import importlib.util

import numpy as np
import pytest
import zarr

from neuropipe import demo, store
from neuropipe.config import load_settings
from neuropipe.errors import ConfigurationError
from neuropipe.io.stored import open_stored


def test_an_s3_store_is_read_from_the_file_and_the_environment(tmp_path, monkeypatch, bare_environment, config_file):
    path = config_file(**{"neuropipe.store": "s3://lab-arrays/neuropipe", "store.region": "eu-west-1",
                                     "store.access_key": "AKIAEXAMPLE", "store.secret_key": "very-secret"})
    settings = load_settings(path)
    assert store.is_remote(settings) and store.protocol(settings) == "s3"
    spec = store.datajoint_spec(settings)
    assert spec["bucket"] == "lab-arrays" and spec["location"] == "neuropipe"
    assert spec["endpoint"] == "https://s3.eu-west-1.amazonaws.com" and spec["secure"]
    assert (spec["access_key"], spec["secret_key"]) == ("AKIAEXAMPLE", "very-secret")
    monkeypatch.setenv("NEUROPIPE_STORE_ENDPOINT", "http://minio.lab:9000")
    settings = load_settings(path)
    assert store.datajoint_spec(settings)["endpoint"] == "http://minio.lab:9000"
    assert not store.datajoint_spec(settings)["secure"]
    shown = repr(settings) + store.describe(settings)
    assert "very-secret" not in shown and "AKIAEXAMPLE" not in shown and "minio.lab:9000" in shown


def test_aws_variables_are_the_fallback(tmp_path, monkeypatch, bare_environment, config_file):
    monkeypatch.setenv("NEUROPIPE_STORE", "s3://bucket")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-west-2")
    settings = load_settings(config_file())
    spec = store.datajoint_spec(settings)
    assert (spec["endpoint"], spec["location"], spec["access_key"]) == ("http://127.0.0.1:9000", "", None)
    assert store.s3_region(settings) == "us-west-2"


@pytest.mark.parametrize("url, complaint", [
    ("ftp://host/arrays", "expected a directory, s3://bucket/prefix or gs://bucket/prefix"),
    ("s3:///no-bucket", "a bucket name"),
    ("s3://key:secret@bucket/prefix", "credentials belong in store.access_key"),
])
def test_a_malformed_store_url_is_refused_by_name(tmp_path, monkeypatch, bare_environment, url, complaint, config_file):
    monkeypatch.setenv("NEUROPIPE_STORE", url)
    with pytest.raises(ConfigurationError, match="NEUROPIPE_STORE") as raised:
        load_settings(config_file())
    assert complaint in str(raised.value)


def test_half_a_key_pair_is_refused(tmp_path, monkeypatch, bare_environment, config_file):
    monkeypatch.setenv("NEUROPIPE_STORE", "s3://bucket/prefix")
    monkeypatch.setenv("NEUROPIPE_STORE_ACCESS_KEY", "only-this")
    with pytest.raises(ConfigurationError, match="set both, or neither"):
        store.prepare(load_settings(config_file()))


def test_a_gs_store_names_its_missing_package(tmp_path, monkeypatch, bare_environment, config_file):
    if importlib.util.find_spec("gcsfs") is not None:
        pytest.skip("gcsfs is installed here: nothing is missing")
    monkeypatch.setenv("NEUROPIPE_STORE", "gs://bucket/prefix")
    settings = load_settings(config_file())
    assert store.datajoint_spec(settings)["protocol"] == "gcs"
    with pytest.raises(ConfigurationError, match="pip install gcsfs"):
        store.prepare(settings)


def test_object_store_failures_worth_another_attempt_are_told_apart():
    from botocore.exceptions import ClientError, EndpointConnectionError

    def answer(code, status):
        return ClientError({"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
                           "PutObject")

    assert store.is_transient(EndpointConnectionError(endpoint_url="http://127.0.0.1:1"))
    assert store.is_transient(answer("SlowDown", 503)) and store.is_transient(answer("InternalError", 500))
    assert not store.is_transient(answer("NoSuchBucket", 404)) and not store.is_transient(answer("AccessDenied", 403))
    assert not store.is_transient(ConnectionError("not from the store's client"))  # judged by the worker's own rules


@pytest.mark.slow
@pytest.mark.parametrize("settings", ["postgresql"], indirect=True)  # MariaDB on S3: worker/test_make, blockwise/
def test_the_demo_chain_runs_on_an_object_store(s3_pipeline, s3_settings, s3_server, tmp_path, monkeypatch):
    """Imports, model, blockwise maps, detections, metrics, the report, the viewer and an export, all from S3."""
    from neuropipe.pipeline import pipeline_tables
    from neuropipe.reports import viewer, write_report
    from neuropipe.worker import run_worker

    monkeypatch.setenv("NEUROPIPE_HOME", str(tmp_path / "home"))
    plan = demo.sample_plan(tmp_path, iterations=40, minutes=1.0)
    results = demo.run_demo(plan, s3_settings, connection=s3_pipeline.volume.schema.connection)
    assert results["failed"] == {}
    assert results["rows"]["DetectionMetrics"] == 2 and results["rows"]["MembraneMap"] == 2
    keys = s3_server.keys(s3_settings.store)
    assert any(key.endswith(".npy") for key in keys) and any("/blockwise/" in key for key in keys)
    assert any("_membrane_model/" in key or "/MembraneModel/" in key for key in keys)  # the model too
    detection = s3_pipeline.detection.CellDetection & {"dataset": "sample_eval"}
    labels = np.asarray(open_stored(detection.fetch1("labels")))
    assert labels.max() == len(s3_pipeline.detection.CellDetection.Cell & {"dataset": "sample_eval"})

    tables = pipeline_tables([s3_pipeline])
    document = write_report(tmp_path / "report.html", tables, port=9000).read_text()
    assert "sample_eval" in document and document.count("data:image/png;base64,") >= 3  # panels drawn from S3
    cache = viewer.cache_folder(s3_settings)
    assert cache.is_relative_to(tmp_path / "home")  # a machine's own cache, not in the bucket
    viewer.prepare("sample_eval", tables, cache)
    assert (cache / "sample_eval" / "labels" / "info").is_file()

    export = s3_pipeline.export
    export.ExportTarget.insert1(dict(dataset="sample_eval", target="labels", content="labels",
                                     uri=f"file://{tmp_path}/out.zarr#cells"))
    assert run_worker([export.LabelExport], max_idle=0)["LabelExport"].made == 1
    written = zarr.open_array(store=str(tmp_path / "out.zarr"), path="cells", mode="r")
    np.testing.assert_array_equal(written[...], labels)
