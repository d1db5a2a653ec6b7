"""Time ``neuropipe demo`` on a fresh data directory against the same work done by hand.

The peer is what a lab does today in a notebook: call the same kernels directly, with no
database, no job table and no store.  The ratio is what the schema-driven pipeline costs on
top (connection, embedded server start, job bookkeeping, storing every array).  Target: the
cold demo under 60 s on a 2-core machine.

    python bench/bench_demo.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def run_cli(home: Path) -> float:
    """Run ``neuropipe demo`` with its data under ``home``; return the wall time."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "neuropipe.cli", "demo"], check=True, cwd=home,
                   env={**os.environ, "NEUROPIPE_HOME": str(home)}, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def run_by_hand() -> float:
    """Run the demo's computation by calling the kernels directly (the peer)."""
    from neuropipe import demo, ops

    start = time.perf_counter()
    plan = demo.sample_plan(Path(tempfile.mkdtemp()))
    train = ops.make_sample(demo.SAMPLE_SHAPE, seed=0, cell_diameter=demo.SAMPLE_CELL_DIAMETER)
    held_out = ops.make_sample(demo.SAMPLE_SHAPE, seed=1, cell_diameter=demo.SAMPLE_CELL_DIAMETER)
    model = ops.train_membrane(train.image, train.membrane, progress=False, **plan.training)
    for sample in (train, held_out):
        probability = ops.predict_membrane(model, sample.image)
        found = ops.detect_cells(1 - probability, **plan.detection)
        ops.pixel_scores(probability, sample.membrane)
        ops.match_centroids(found.centroids, sample.centroids, radius=5)
        ops.adapted_rand_error(ops.label_components(probability <= 0.5, connectivity=6).labels, sample.cells)
    return time.perf_counter() - start


def main() -> None:
    """Print the demo's cold and warm wall times and the ratio to the by-hand peer."""
    home = Path(tempfile.mkdtemp(prefix="neuropipe-bench-"))
    os.chmod(home, 0o755)
    try:
        cold = run_cli(home)
        warm = run_cli(home)
    finally:
        subprocess.run([sys.executable, "-m", "neuropipe.cli", "db", "stop"], cwd=home,
                       env={**os.environ, "NEUROPIPE_HOME": str(home)}, stdout=subprocess.DEVNULL)
    by_hand = run_by_hand()
    print(f"neuropipe demo, fresh data dir (embedded server cold start): {cold:6.1f} s  (target <= 60 s)")
    print(f"neuropipe demo, second run (everything reused):               {warm:6.1f} s")
    print(f"same kernels called by hand, no database (peer):             {by_hand:6.1f} s")
    print(f"ratio demo / peer: {cold / by_hand:.2f}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
