"""Which detection a report and the viewer show: the best scored one, the learned option's included."""

import numpy as np
import pytest
import tensorstore

from neuropipe.io.stored import open_stored
from neuropipe.pipeline import classes_around, pipeline_tables
from neuropipe.reports import images, viewer, write_report
from neuropipe.reports.results import dataset_results
from neuropipe.worker import run_worker


@pytest.mark.parametrize("settings", ["postgresql"], indirect=True)
def test_a_learned_detection_is_shown_where_it_is_the_best(pipeline, nuclei_files, tmp_path):
    volume, nuclei, detection = pipeline.volume, pipeline.nuclei, pipeline.detection
    for name, purpose in (("train", "train"), ("eval", "evaluate")):
        volume.Dataset.insert1(dict(dataset=name, source=f"file://{nuclei_files[name]}#image"))
        volume.Annotation.insert1(dict(dataset=name, kind="cells", purpose=purpose,
                                       source=f"file://{nuclei_files[name]}#cells"))
    nuclei.NucleiTrainingParams.insert_params(dict(iterations=40, width=8, crop=24, seed=0))
    for stop in (0.4, 0.9):  # two scored detections of each volume: the better one is shown
        detection.DetectionParams.insert_params(dict(method="learned", threshold=0.5, stop=stop, sphere_size=10))
    pipeline.metrics.MetricsParams.insert_params({"radius": 5.0, "threshold": 0.5})
    tables = pipeline_tables(list(pipeline.MODULES))
    tally = run_worker(tables, max_idle=0)
    assert not any(t.errors for t in tally.values())

    f1s = [sorted(set((nuclei.NucleiMetrics & {"dataset": name}).to_arrays("f1"))) for name in ("train", "eval")]
    assert any(len(values) == 2 for values in f1s), f1s  # a choice to make
    shown = {result.dataset: result for result in dataset_results(classes_around(tables))}
    assert set(shown) == {"train", "eval"}
    for name, result in shown.items():
        scores = nuclei.NucleiMetrics & {"dataset": name}
        assert len(scores) == 2
        assert result.detection_table == "NucleiDetection" and result.probability is None
        assert result.f1 == pytest.approx(max(scores.to_arrays("f1")))
        assert (scores & result.labels).fetch1("f1") == pytest.approx(result.f1)
        assert result.cell_count == (nuclei.NucleiDetection & result.labels).fetch1("cell_count")

    result = shown["eval"]
    stored = np.asarray(open_stored((nuclei.NucleiDetection & result.labels).fetch1("labels")))
    drawn = images.planes(result, classes_around(tables))
    np.testing.assert_array_equal(drawn["labels"], stored[result.shape[0] // 2])
    assert "cells (learned): " in images._title("labels", result, drawn["labels"])

    document = write_report(tmp_path / "report.html", tables, port=9000).read_text()
    assert "NucleiMetrics" in document and "No dataset has a membrane map or detections yet." not in document
    assert document.count("cells detected (NucleiDetection), detection F1 ") == 2  # a panel per volume

    _, layers = viewer.prepare("eval", tables, tmp_path / "cache")
    assert layers == ("image", "labels")
    served = tensorstore.open({"driver": "neuroglancer_precomputed",
                               "kvstore": f"file://{tmp_path}/cache/eval/labels"}).result()
    np.testing.assert_array_equal(np.asarray(served.read().result())[..., 0].transpose(2, 1, 0), stored)
