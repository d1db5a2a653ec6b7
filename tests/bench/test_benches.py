"""Each benchmark runs end to end at a tiny size and ends with its JSON line.

The benchmarks are run by hand at full size (``bench/README.md``); here they only have to
work: the servers are real, the sizes are not.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
PEERS = ROOT / ".venv-peers" / "bin" / "python"
BACKENDS = pytest.mark.parametrize("backend", ["postgresql", "mysql"])


def run_bench(script: str, *arguments: str, timeout: float = 600) -> dict:
    """Run ``bench/<script>`` with ``arguments``; return its last line, parsed."""
    done = subprocess.run([sys.executable, str(ROOT / "bench" / script), *arguments], cwd=ROOT, timeout=timeout,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@BACKENDS
def test_steps_bench(backend):
    result = run_bench("bench_steps.py", "--jobs", "30", "--rounds", "1", "--backend", backend)
    assert result["backend"] == backend and result["step_over_hand_written"] > 0
    for way in ("hand-written", "step"):
        (run,) = result["runs"][way]
        assert run["ms_per_job"] > 0 and run["round_trips_per_job"] > 0


@BACKENDS
def test_dashboard_bench(backend):
    result = run_bench("bench_dashboard.py", "--jobs", "2000", "--small", "500", "--repeat", "1", "--backend", backend)
    assert result["backend"] == backend and result["jobs"] == 2000 and result["workers"] == 100
    assert result["views"] and all(view["median_s"] > 0 and view["bytes"] > 0 for view in result["views"].values())


@BACKENDS
def test_overhead_bench(backend):
    with_peers = PEERS.exists() and backend == "postgresql"  # Snakemake and Prefect use no database: once is enough
    peers = () if with_peers else ("--no-peers",)
    result = run_bench("overhead.py", "--jobs", "30", "--backend", backend, *peers)
    for name in ("neuropipe", "neuropipe_batched", "datajoint", "datajoint_bare"):
        assert result[f"{name}_ms_per_job"] > 0
        assert result[f"{name}_round_trips_per_job"] > 0
        assert result[f"{name}_durable_commits_per_job"] >= 0
    assert result["backend"] == backend
    if with_peers:  # at this size Snakemake's start-up noise can exceed its 30 jobs: only that it ran
        assert result["snakemake_ms_per_job"] is not None and result["prefect_ms_per_job"] > 0


@BACKENDS
def test_growth_bench(backend):
    result = run_bench("growth.py", "--backend", backend, "--small", "200", "--large", "2000", "--queue", "500",
                       "--claims", "10")
    assert result["claim_growth"] > 0 and result["status_seconds"] > 0
    assert result["refresh_keys_per_s"] > 0 and result["stock_refresh_keys_per_s"] > 0


def test_scaling_bench():
    result = run_bench("scaling.py", "--cpu-jobs", "4", "--rounds", "2000", "--trivial-jobs", "40", "--many", "3")
    assert result["cpu_speedup_2_workers"] > 0 and result["many_over_one"] > 0
    assert result["made_twice"] is False


def test_capacity_bench():
    result = run_bench("capacity.py", "--clients", "1", "2", "--seconds", "1", "--jobs", "3000")
    assert set(result["visible_jobs_per_s"]) == {"1", "2"}
    assert all(rate > 0 for rate in [*result["visible_jobs_per_s"].values(), *result["batched_jobs_per_s"].values()])


def test_kernels_bench():
    result = run_bench("kernels.py", "--shape", "16", "96", "96", "--no-chain", "--repeats", "2")
    assert result["membrane_ratio"] > 0 and result["components_ratio"] > 0


def test_blockwise_bench():
    result = run_bench("bench_blockwise.py", "--shape", "16", "256", "256", "--block", "16", "128", "128",
                       "--methods", "components", "--workers", "1")
    assert result["blockwise_equals_whole"] is True
    assert result["peak_rss_over_working_set"] > 0 and result["volume_over_working_set"] > 0


def test_gpu_bench():
    result = run_bench("bench_gpu.py", "--steps", "4", "--minutes", "0")
    assert result["cpu"]["train_steps_per_s"] > 0 and result["cpu"]["inference_mvx_per_s"] > 0
    worker = result["worker"]
    assert worker["made_by"]["none"] == 0 and worker["exit_codes"]["none"] == 0  # a CPU-only worker leaves them
    if result["gpu"] is None:  # no CUDA here: the GPU worker refuses to start, saying why, and makes nothing
        assert worker["exit_codes"]["all"] != 0 and worker["made_by"]["all"] == 0
    else:
        assert worker["exit_codes"]["all"] == 0 and worker["made_by"]["all"] == worker["rows"]


def test_scaling_rate_counts_the_window_where_all_workers_work():
    sys.path.insert(0, str(ROOT / "bench"))
    from scaling import rate_while_all_work

    seconds = np.timedelta64(1, "s")
    base = np.datetime64("2026-01-01T00:00:00")
    # worker 1 makes jobs in [0,1),[1,2),[2,3); worker 2 in [1,2),[2,3): both work over [1,3), 4 jobs there
    start = base + np.array([0, 1, 2, 1, 2]) * seconds
    end = base + np.array([1, 2, 3, 2, 3]) * seconds
    rate, overlapped = rate_while_all_work(start, end, np.array([1, 1, 1, 2, 2]))
    assert overlapped and rate == pytest.approx(2.0)
    # worker 2 starts after worker 1 ends: no shared window, so the rate is over the whole run (3 jobs in 4 s)
    start = base + np.array([0, 1, 3]) * seconds
    end = base + np.array([1, 2, 4]) * seconds
    rate, overlapped = rate_while_all_work(start, end, np.array([1, 1, 2]))
    assert not overlapped and rate == pytest.approx(0.75)


def test_detection_bench():
    result = run_bench("bench_detection.py", "--regimes", "small volume", "--seeds", "0", "1", "--methods", "blobs")
    assert "perfect_map_spheres" not in result  # the ceiling of spheres, swept only with them
    blobs = result["blobs"]
    assert blobs["params"]["method"] == "blobs" and 0 < blobs["best_mean"]["small volume"] <= 1
    assert blobs["held_out"]["small volume"] <= blobs["best_mean"]["small volume"]  # chosen elsewhere: no better


def test_merge_ceiling_bench():
    result = run_bench("bench_merge_ceiling.py", "--regime", "small volume", "--seeds", "0", "--sizes", "8")
    figures = result["8"]
    assert 0 < figures["no_merging"] <= 1 and 0 < figures["default"] <= 1
    # merging as the truth says beats any rule, up to a centroid the union moves out of reach
    assert figures["oracle"] >= max(figures["no_merging"], figures["default"]) - 0.02
    assert 0 <= figures["unseeded"] < 60
    assert figures["seeded_voxels"] > 0 and 0.5 < figures["seeded_prob"] <= 1  # the seeded nuclei lie in the mask
