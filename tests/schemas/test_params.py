"""Parameter sets: keyed by content, checked at insert, bad ones recorded by the worker."""

import numpy as np
import pytest

from neuropipe.errors import BadInputError
from neuropipe.params import params_hash
from neuropipe.pipeline import pipeline_tables
from neuropipe.worker import run_worker


def test_same_parameters_same_key(pipeline):
    detection = pipeline.detection.DetectionParams
    first = detection.insert_params({"threshold": 0.3, "sphere_size": 12})
    again = detection.insert_params({"sphere_size": 12, "threshold": 0.3})
    assert first == again == {"detection_id": params_hash({"threshold": 0.3, "sphere_size": 12})}
    assert len(detection()) == 1
    assert detection().fetch_params(first) == {"threshold": 0.3, "sphere_size": 12}
    assert detection.insert_params({"threshold": 0.4}) != first


@pytest.mark.parametrize(
    "table, params, message",
    [
        ("DetectionParams", {"threshold": 1.5}, "threshold=1.5 is invalid; it must be a probability in"),
        ("DetectionParams", {"sphere_size": -3}, "sphere_size=-3 is invalid"),
        ("DetectionParams", {"method": "magic"}, "method='magic' is invalid; it must be one of spheres, components"),
        ("DetectionParams", {"radius": 3}, "unknown parameter"),
        ("TrainingParams", {"iterations": 0}, "iterations=0 is invalid"),
        ("TrainingParams", {"device": "cuda"}, "unknown parameter"),
        ("InferenceParams", {"normalise": "slice"}, "unknown parameter"),  # the model's own, set in training
        ("MetricsParams", {"threshold": -0.1}, "threshold=-0.1 is invalid"),
    ],
)
def test_invalid_parameters_are_refused_at_insert(pipeline, table, params, message):
    module = {"DetectionParams": pipeline.detection, "TrainingParams": pipeline.membrane,
              "InferenceParams": pipeline.membrane, "MetricsParams": pipeline.metrics}[table]
    with pytest.raises(BadInputError, match=message):
        getattr(module, table).insert_params(params)
    assert len(getattr(module, table)()) == 0


def test_parameters_inserted_around_the_check_fail_in_the_job_table(pipeline, tmp_path):
    rng = np.random.default_rng(1)
    labels = np.zeros((2, 32, 32), np.uint8)
    labels[:, ::8] = 1
    np.savez(tmp_path / "s.npz", image=rng.integers(0, 255, (2, 32, 32), dtype=np.uint8), membrane=labels)
    volume, membrane = pipeline.volume, pipeline.membrane
    volume.Dataset.insert1(dict(dataset="s", source=f"file://{tmp_path}/s.npz#image"))
    volume.Annotation.insert1(dict(dataset="s", kind="membrane", purpose="train", source=f"file://{tmp_path}/s.npz#membrane"))
    membrane.TrainingParams.insert1(dict(training_id="raw", params={"iterations": -5}))
    run_worker(pipeline_tables([volume, membrane]), max_idle=0)
    assert len(membrane.MembraneModel()) == 0
    job = (membrane.MembraneModel().jobs & {"training_id": "raw"}).fetch1()
    assert job["status"] == "error" and "iterations" in job["error_message"]
