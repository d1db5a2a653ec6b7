"""A SABER-shaped CWL workflow imported as tables and run by two workers, on every backend.

The workflow (``tests/cwl/saber/``): pull a cutout from the local Boss server, detect cells,
score them against annotated centroids, each a CWL ``CommandLineTool`` whose command is a
small Python script; the score step carries SABER's ``hints: saber: score_format``.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("cwltool", reason="CWL support is the cwl extra (pip install 'neuropipe[cwl]')")

from boss_server import BossServer  # noqa: E402

from neuropipe import provenance  # noqa: E402
from neuropipe.cli import main  # noqa: E402

SABER = Path(__file__).resolve().parent / "saber"
CENTRES = [(3, 10, 12), (4, 30, 40), (5, 12, 44), (3, 34, 14), (6, 22, 28)]
SWEEP = """\
# SABER parameterization: one metaparameter, fed to the detection step's threshold
detect_threshold:
  range: {start: 0.1, stop: 1.0, step: 0.4}
  parameters:
    abs: threshold
  steps:
    - cell_detect
"""


def spheres(shape=(10, 48, 56), radius=3.0) -> np.ndarray:
    """A uint8 volume of balls of brightness 120 to 200 on a dim, noisy background (the Boss channel)."""
    grid = np.indices(shape).transpose(1, 2, 3, 0)
    image = np.random.default_rng(5).integers(0, 40, size=shape)
    for index, centre in enumerate(CENTRES):
        inside = ((grid - np.asarray(centre)) ** 2 * np.array([4, 1, 1])).sum(-1) <= (2 * radius) ** 2
        image[inside] = 120 + 20 * index
    return image.astype(np.uint8)


@pytest.fixture
def flow(environment, settings, tmp_path, monkeypatch):
    """The workflow imported as a module of tables in a schema of the test's own, with a Boss server to pull from."""
    with BossServer(token="saber-token") as boss:
        boss.add_channel("lab", "exp", "em", spheres(), voxel_size=(40, 4, 4))
        boss.add_channel("lab", "exp", "blank", np.zeros((10, 48, 56), np.uint8), voxel_size=(40, 4, 4))
        name = f"saber_flow_{os.getpid()}_{time.monotonic_ns() % 10**6}"
        module_path = tmp_path / f"{name}.py"
        assert main(["cwl", "import", str(SABER / "workflow.cwl"), "-o", str(module_path),
                     "--schema", "saber"]) == 0
        monkeypatch.syspath_prepend(str(tmp_path))
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
        module = importlib.import_module(name)
        module.annotation = tmp_path / "centres.csv"
        np.savetxt(module.annotation, np.asarray(CENTRES, float), delimiter=",")
        module.boss, module.volume = boss, environment.volume
        yield module
        module.schema.drop(prompt=False)
        sys.modules.pop(name, None)


def start(flow, channel: str) -> None:
    """Start the workflow on one Boss channel: its dataset, its annotation file, the pull's settings."""
    flow.volume.Dataset.insert1(dict(dataset=channel, source=f"bossdb://lab/exp/{channel}",
                                     voxel_z_nm=40, voxel_y_nm=4, voxel_x_nm=4))
    flow.WorkflowInput.insert1(dict(dataset=channel, annotation=str(flow.annotation)))
    flow.BossPullParams.insert_params(dict(host=flow.boss.host, protocol="http", token=flow.boss.token,
                                           collection="lab", experiment="exp", channel=channel,
                                           xrange="0:56", yrange="0:48", zrange="0:10"))


def launch(module, tmp_path, count=2, max_idle=8.0):
    """Start ``count`` ``neuropipe worker`` processes on the module; return once each is serving."""
    command = [sys.executable, "-m", "neuropipe.cli", "worker", "--pipeline", module.__name__,
               "--max-idle", str(max_idle), "--poll", "0.2", "--heartbeat", "1"]
    logs = [tmp_path / f"worker{index}.log" for index in range(count)]
    processes = [subprocess.Popen(command, stdout=open(log, "w"), stderr=subprocess.STDOUT) for log in logs]
    deadline = time.monotonic() + 120
    while not all("serving" in log.read_text() for log in logs):
        assert time.monotonic() < deadline and all(p.poll() is None for p in processes), [g.read_text() for g in logs]
        time.sleep(0.2)
    return processes, logs


def drained(processes, logs) -> list[str]:
    """Wait for the workers to exit once the queue stays empty; return their logs."""
    for process in processes:
        assert process.wait(timeout=300) == 0
    return [log.read_text() for log in logs]


def test_the_workflow_runs_as_tables_swept_by_a_saber_file_with_scores(flow, tmp_path, capsys):
    sweep = tmp_path / "sweep.yml"
    sweep.write_text(SWEEP)
    assert main(["sweep", str(sweep), "--pipeline", flow.__name__]) == 0
    thresholds = sorted(flow.CellDetectParams.effective(row["params"])["threshold"]
                        for row in flow.CellDetectParams.to_dicts())
    assert thresholds == [0.1, 0.5, 0.5, 0.9]  # the tool's default set, and the sweep's three

    running = launch(flow, tmp_path)  # both serving before there is work, so that both take some
    start(flow, "em")
    logs = drained(*running)
    pulled = flow.BossPull()
    assert len(pulled) == 1
    cutout = np.load(pulled.fetch1("cutout").full_path)
    np.testing.assert_array_equal(cutout, spheres())
    assert "pulled (10, 48, 56) uint8" in bytes(pulled.fetch1("stdout")).decode()
    assert pulled.fetch1("ran_in").startswith(("host (no container engine", "container python:3.11-slim"))

    scored = (flow.Score * flow.CellDetectParams).to_dicts()
    assert len(scored) == 4 and all(0.0 <= row["score"] <= 1.0 for row in scored)
    by_threshold = {flow.CellDetectParams.effective(row["params"])["threshold"]: row["score"] for row in scored}
    assert by_threshold[0.5] == pytest.approx(1.0)  # every ball, and nothing else
    assert by_threshold[0.9] == pytest.approx(1 / 3, abs=1e-3)  # only the brightest ball: recall 1/5
    assert by_threshold[0.1] < 0.5  # the noise joins the balls into a few large objects
    best = max(scored, key=lambda row: row["score"])
    assert f"F1: {best['score']:.4f}" in Path(best["report"].full_path).read_text()
    done_by = {row["pid"] for table in (flow.BossPull, flow.CellDetect, flow.Score)
               for row in provenance.of(table).to_dicts()}
    assert len(done_by) == 2, "both workers took jobs"
    assert all("Traceback" not in log for log in logs), logs

    capsys.readouterr()
    assert main(["scores", "Score", "--metric", "score", "--pipeline", flow.__name__, "--plot", "none"]) == 0
    header, best_line = capsys.readouterr().out.splitlines()[:2]
    assert header.split()[:1] == ["score"] and "threshold" in header.split()  # best first, with its threshold
    assert best_line.split()[0] == f"{best['score']:.4g}" or float(best_line.split()[0]) == pytest.approx(best["score"])


def test_a_failing_tool_leaves_its_stderr_in_the_job_table_and_no_row(flow, tmp_path):
    start(flow, "blank")
    drained(*launch(flow, tmp_path, count=1, max_idle=0))
    assert len(flow.BossPull()) == 1  # a cutout of zeros is pulled,
    assert len(flow.CellDetect()) == 0  # but nothing can be detected in it
    errors = (flow.CellDetect.jobs & {"status": "error"}).to_dicts()
    assert len(errors) == 1
    assert "detect.cwl failed (permanentFail)" in errors[0]["error_message"]
    assert "is constant (0.0): nothing to detect" in errors[0]["error_message"]
    assert len(flow.Score()) == 0
