"""`neuropipe sweep` and `neuropipe scores` on the bundled pipeline, through the command line."""

import csv

import pytest

from neuropipe import demo
from neuropipe.cli import main
from neuropipe.pipeline import pipeline_tables
from neuropipe.worker import run_worker

SWEEP = """
table: DetectionParams
description: threshold sweep
base: {method: components, min_voxels: 20}
parameters:
  threshold: {range: {start: 0.3, stop: 0.8, step: 0.2}}
"""



@pytest.mark.slow
@pytest.mark.parametrize("settings", ["postgresql"], indirect=True)
def test_a_sweep_fills_the_graph_and_its_scores_come_back_best_first(environment, settings, tmp_path, capsys):
    schemas = environment
    plan = demo.sample_plan(tmp_path, iterations=20, minutes=1.0)
    demo.run_demo(plan, settings, connection=schemas.volume.schema.connection)
    before = len(schemas.metrics.DetectionMetrics())
    (tmp_path / "sweep.yaml").write_text(SWEEP)

    assert main(["sweep", str(tmp_path / "sweep.yaml"), "--dry-run"]) == 0
    assert capsys.readouterr().out.count("DetectionParams {") == 3
    assert len(schemas.detection.DetectionParams()) == 1  # a dry run inserts nothing
    assert main(["sweep", str(tmp_path / "sweep.yaml")]) == 0
    assert "DetectionParams: 3 parameter set(s), 3 new" in capsys.readouterr().out
    assert main(["sweep", str(tmp_path / "sweep.yaml")]) == 0
    assert "3 parameter set(s), 0 new" in capsys.readouterr().out  # the same sets again: nothing new

    run_worker(pipeline_tables([schemas]), max_idle=0)  # the workers compute what the new sets imply
    scored = schemas.metrics.DetectionMetrics()
    assert len(scored) == 4 * before  # every annotated result, once per detection parameter set

    assert main(["scores", "DetectionMetrics", "--metric", "f1", "--csv", str(tmp_path / "scores.csv"),
                 "--plot", str(tmp_path / "scores.png")]) == 0
    out = capsys.readouterr().out
    plotted = next(line for line in out.splitlines() if line.startswith("plotted f1 against"))
    assert "DetectionParams.threshold" in plotted and "MetricsParams" not in plotted  # it has a threshold too
    rows = list(csv.DictReader(open(tmp_path / "scores.csv")))
    assert len(rows) == len(scored)
    f1 = [float(row["f1"]) for row in rows]
    assert f1 == sorted(f1, reverse=True)
    swept = {float(row["DetectionParams.threshold"]) for row in rows}
    assert {0.3, 0.5, 0.7} <= swept
    assert (tmp_path / "scores.png").read_bytes()[:4] == b"\x89PNG"

    assert main(["scores", "DetectionMetrics", "--metric", "nope", "--plot", "none"]) == 2
    assert "DetectionMetrics has no column 'nope'; its scores: " in capsys.readouterr().err
