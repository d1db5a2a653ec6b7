"""Kernels through the tables against the same kernels called by hand, on the same input.

On the local PostgreSQL server (or ``DJ_HOST``/``DJ_PORT``), one synthetic EM-like volume
(``--shape``, one block of the default blocking, so the tables process it whole), imported
``--repeats`` times so that each way's fastest run counts:

- U-Net inference: the seconds ``MembraneBlock`` and ``MembraneMap`` spent (their provenance
  records) against ``ops.predict_membrane`` on the same image with the same model;
- connected components: ``DetectionBlock`` and ``CellDetection`` (method ``components``)
  against ``cc3d.connected_components`` on the same thresholded map, and against
  ``ops.detect_cells`` by hand (which, like the tables, also drops dust and measures each
  cell's centroid and score);
- the whole chain: the demo (``neuropipe.demo.run_demo`` on the sample, a worker loop through
  every table) against the same kernels called by hand (``bench/bench_demo.py``'s peer).

Each ratio is raw seconds over table seconds for the kernels (1.0: the tables cost nothing on
top) and demo seconds over by-hand seconds for the chain.

    python bench/kernels.py [--shape 32 512 512] [--repeats 3]

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path

import cc3d
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from bench_blockwise import register_volume_and_model  # noqa: E402
from bench_demo import run_by_hand  # noqa: E402
from overhead import settings_for  # noqa: E402

from neuropipe import demo, ops, provenance  # noqa: E402
from neuropipe.database import connect  # noqa: E402
from neuropipe.io.stored import open_stored  # noqa: E402
from neuropipe.pipeline import pipeline_tables  # noqa: E402
from neuropipe.worker import registry, run_worker  # noqa: E402

INFERENCE = {"tile": 64, "overlap": 8, "precision": "float32"}
COMPONENTS = {"method": "components", "threshold": 0.5, "min_voxels": 20, "max_cells": 1_000_000}


def seconds_in(table, key: dict) -> float:
    """Return the seconds the jobs of ``table`` under ``key`` took, as their provenance records them."""
    return float(np.sum((provenance.of(table) & key).to_arrays("duration")))


def kernels_through_tables(settings, shape, repeats: int = 3) -> dict:
    """Populate maps and components of one volume; time the same kernels by hand on the same data.

    Each side's seconds are the fewest of ``repeats`` runs (the tables make the same volume,
    imported ``repeats`` times as datasets of their own).
    """
    import schemas

    folder = Path(tempfile.mkdtemp(prefix="bench-kernels-"))
    sample = ops.make_sample(tuple(shape), seed=1, cell_diameter=14)
    train = ops.make_sample((16, 128, 128), seed=99, cell_diameter=14)
    np.savez(folder / "volume.npz", image=sample.image)
    np.savez(folder / "train.npz", image=train.image, cells=train.cells)
    model = ops.train_membrane(train.image, train.cells == 0, iterations=100, width=8, depth=2, crop=64,
                               precision="float32", progress=False, seed=0)
    volume, membrane, detection = schemas.volume, schemas.membrane, schemas.detection
    try:
        register_volume_and_model(settings, folder, f"file://{folder}/volume.npz#image", model)
        membrane.InferenceParams.insert_params(INFERENCE)
        components = detection.DetectionParams.insert_params(COMPONENTS)
        steps = [membrane.MembraneBlock, membrane.MembraneMap, detection.DetectionBlock, detection.CellDetection]
        # the same volume under `repeats` names ("big" is registered already), made anew by each run
        copies = [{"dataset": "big"}] + [{"dataset": f"big{index}"} for index in range(1, repeats)]
        volume.Dataset.insert([dict(copy, source=f"file://{folder}/volume.npz#image") for copy in copies[1:]])
        run_worker(pipeline_tables([volume]), max_idle=0)
        image = np.asarray(volume.Volume.open_image(copies[0]))
        tables, raw = {}, {}
        for key in copies:  # each way its fastest of `repeats` runs: single runs here vary by 30%
            run_worker(steps, max_idle=0, restrictions=(key,))
            seconds = {"membrane": seconds_in(membrane.MembraneBlock, key) + seconds_in(membrane.MembraneMap, key),
                       "components": seconds_in(detection.DetectionBlock, {**key, **components})
                       + seconds_in(detection.CellDetection, {**key, **components})}
            probability = np.asarray(open_stored((membrane.MembraneMap & key).fetch1("probability")))
            start = time.perf_counter()
            ops.predict_membrane(model, image, **INFERENCE)
            by_hand = {"membrane": time.perf_counter() - start}
            start = time.perf_counter()
            cc3d.connected_components((1.0 - probability) > COMPONENTS["threshold"], connectivity=26)
            by_hand["components"] = time.perf_counter() - start
            start = time.perf_counter()  # what the tables compute: labels, dust, centroids, scores
            ops.detect_cells(1.0 - probability.astype(np.float64), **COMPONENTS)
            by_hand["detect_cells"] = time.perf_counter() - start
            seconds["detect_cells"] = seconds["components"]
            tables = {name: min(value, tables.get(name, np.inf)) for name, value in seconds.items()}
            raw = {name: min(value, raw.get(name, np.inf)) for name, value in by_hand.items()}
        return {name: {"table_s": tables[name], "raw_s": raw[name], "ratio": raw[name] / tables[name]}
                for name in tables}
    finally:
        schemas.drop()
        registry.drop()


def chain(settings) -> dict:
    """Return the demo's seconds through the tables and the same kernels' seconds by hand."""
    folder = Path(tempfile.mkdtemp(prefix="bench-kernels-demo-"))
    connection = connect(settings)
    try:
        start = time.perf_counter()
        demo.run_demo(demo.sample_plan(folder), settings, connection=connection)
        through = time.perf_counter() - start
    finally:
        import schemas

        schemas.drop()
        registry.drop()
    by_hand = run_by_hand()
    return {"demo_s": through, "by_hand_s": by_hand, "ratio": through / by_hand}


def main() -> None:
    """Time the kernels both ways and the chain both ways; print a table and the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(32, 512, 512), help="volume ZYX (default 32 512 512)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each way; the fastest counts (default 3)")
    parser.add_argument("--no-chain", action="store_true", help="skip the demo chain (it trains a model)")
    args = parser.parse_args()
    settings = dataclasses.replace(settings_for(os.environ.get("DJ_BACKEND", "postgresql")),
                                   schema_prefix=f"kernels_{secrets.token_hex(3)}_")
    kernels = kernels_through_tables(settings, args.shape, args.repeats)
    print(f"\nvolume {tuple(args.shape)}: kernel seconds by hand / through the tables")
    for name, figures in kernels.items():
        print(f"  {name:<11} by hand {figures['raw_s']:7.3f} s   tables {figures['table_s']:7.3f} s   "
              f"ratio {figures['ratio']:.2f}")
    result = {"shape": list(args.shape), **{f"{name}_ratio": round(figures["ratio"], 3)
                                            for name, figures in kernels.items()},
              "seconds": {name: {k: round(v, 3) for k, v in figures.items()} for name, figures in kernels.items()}}
    if not args.no_chain:
        whole = chain(dataclasses.replace(settings, schema_prefix=f"kernels_{secrets.token_hex(3)}_"))
        print(f"  demo chain {whole['demo_s']:.1f} s through the tables, {whole['by_hand_s']:.1f} s by hand: "
              f"{whole['ratio']:.2f}x")
        result.update(chain_ratio=round(whole["ratio"], 3), chain_seconds=[round(whole["demo_s"], 1),
                                                                           round(whole["by_hand_s"], 1)])
    print(json.dumps(result))


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
