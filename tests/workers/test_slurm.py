"""The SLURM launcher for real: a job array of ``neuropipe worker`` processes fills the graph.

``workers/slurm-array.sbatch`` is submitted to the one-node cluster of the ``slurm_cluster``
fixture as an array of three workers that coordinate only through the database's job
tables; the test then checks that every task exited cleanly and that the bundled pipeline
is complete for a tiny synthetic sample.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

from neuropipe import demo

SCRIPT = Path(__file__).resolve().parents[2] / "workers" / "slurm-array.sbatch"
TASKS = 3


@pytest.fixture
def shared_dir():
    """Yield a mode-755 directory directly under the system temporary directory; remove it afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="neuropipe-array-"))
    os.chmod(folder, 0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _worker_environment(settings) -> dict:
    """Environment of the array's tasks: the venv's ``neuropipe`` first on PATH, database and store."""
    bin_dir = Path(sys.executable).parent
    if not (bin_dir / "neuropipe").exists():
        bin_dir = Path(shutil.which("neuropipe") or bin_dir).parent
    return {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "DJ_HOST": settings.host,
        "DJ_PORT": str(settings.port),
        "DJ_USER": settings.user,
        "DJ_PASS": "",
        "DJ_BACKEND": settings.backend,
        "NEUROPIPE_SCHEMA_PREFIX": settings.schema_prefix,
        "NEUROPIPE_STORE": str(settings.store),
        "NEUROPIPE_MAX_IDLE": "10",
    }


def _logs(folder: Path) -> str:
    """Return every task log in ``folder``, for assertion messages."""
    return "\n".join(f"--- {path.name}\n{path.read_text(errors='replace')[-4000:]}"
                     for path in sorted(folder.glob("neuropipe-worker-*.log"))) or "(no task logs)"


@pytest.mark.slow
@pytest.mark.parametrize("settings", ["postgresql"], indirect=True)
def test_slurm_array_of_workers_populates_the_graph(slurm_cluster, pipeline, settings, shared_dir):
    """Three array tasks, started at once on a fresh pipeline, share the work and exit 0."""
    plan = demo.sample_plan(shared_dir / "samples", iterations=30, minutes=1.0)
    demo.register(plan)
    jobs = shared_dir / "jobs"
    jobs.mkdir()

    job_id = slurm_cluster.submit(SCRIPT, env=_worker_environment(settings), options=(
        f"--array=1-{TASKS}", "--cpus-per-task=1", "--mem=1G", "--time=00:10:00", f"--chdir={jobs}"))
    states = slurm_cluster.wait(job_id, timeout=240)

    report = f"states: {states}\n{_logs(jobs)}\n{slurm_cluster.daemon_logs()}"
    assert len(states) == TASKS, report
    assert all(state == ("COMPLETED", "0:0") for state in states.values()), report
    logs = list(jobs.glob(f"neuropipe-worker-{job_id}_*.log"))
    assert len(logs) == TASKS and any("neuropipe worker" in path.read_text() for path in logs), report

    volume, membrane, detection, metrics = pipeline.volume, pipeline.membrane, pipeline.detection, pipeline.metrics
    assert len(metrics.DetectionMetrics()) == 2, report
    assert len(membrane.MembraneModel()) == 1, report
    assert len(membrane.MembraneMap()) == 2, report
    for table in (volume.Volume, volume.AnnotationVolume, membrane.MembraneModel, membrane.MembraneMap,
                  detection.CellDetection, metrics.MembraneMetrics, metrics.DetectionMetrics):
        errors = table().jobs.errors.to_dicts()
        assert not errors, f"{table.__name__}: {errors}\n{report}"
    done = volume.Volume().jobs.to_dicts()
    assert [row["status"] for row in done] == ["success", "success"], report
    assert os.getpid() not in {row["pid"] for row in done}, "the test process, not a SLURM task, did the work"
