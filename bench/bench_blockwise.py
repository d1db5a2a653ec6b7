"""Blockwise maps and detections on a volume many blocks large: worker memory, throughput, bookkeeping.

A synthetic EM-like volume (tiles of ``ops.make_sample``) is written as a zarr source and
imported (as chunked zarr); a small U-Net trained on a separate small sample is applied to it
block by block, and cells are detected as connected components (stitched) and as spheres,
by ``neuropipe worker`` processes on the local PostgreSQL server (127.0.0.1:5432, or
``DJ_HOST``/``DJ_PORT``).  Reported, from the same run:

- ``peak_rss_over_working_set``: the worker's peak RSS (``VmHWM``, polled, and as each job's
  provenance records it) above that of a process that only imports what a worker imports
  (torch alone is some 400 MB), over one block's working set: the peak, above the same
  baseline, of a fresh worker process that makes one interior block (read, compute, write,
  commit) and stops, the largest over the block steps;
- ``peak_rss_over_kernel_alone``: the same peak over the kernel alone on one block's read box
  in a fresh process (no read, write or database), a stricter yardstick;
- ``volume_over_working_set``: the bytes of the volume's float32 map over that working set;
- MVx/s of the blockwise steps (volume voxels over the summed ``seconds`` of their block rows)
  against the whole-volume kernels (``predict_membrane``, ``detect_cells``) on the same volume;
- per block: compute seconds against bookkeeping (the job's duration less its compute: claim
  aside, that is the read, the write and the commit);
- ``blockwise_equals_whole``: the map within 1e-6 and the component labels identical.

    python bench/bench_blockwise.py [--shape 64 768 768] [--block 32 256 256] [--workers 1 2]

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from neuropipe import ops
from neuropipe.config import Settings
from neuropipe.database import connect
from neuropipe.io.stored import open_stored
from neuropipe.supervisor import cpu_share

COMPONENTS = {"method": "components", "threshold": 0.5, "min_voxels": 20, "max_cells": 1_000_000}
SPHERES = {"method": "spheres", "threshold": 0.3, "stop": 0.4, "sphere_size": 10, "dilation": 2,
           "max_cells": 1_000_000}
TILE = 64
METHODS = {"components": COMPONENTS, "spheres": SPHERES}
ONE_JOB = """
import json, os, sys
import schemas
from neuropipe import registry, resources
from neuropipe.config import load_settings
from neuropipe.database import connect
from neuropipe.worker import pipeline_tables, run_worker
resources.limit_malloc_arenas()
settings = load_settings()
connection = connect(settings)
schemas.activate(settings.schema_prefix, connection)
registry.activate(settings.schema_prefix, connection)
tally = run_worker(pipeline_tables([schemas], [sys.argv[1]]), max_idle=0, max_jobs=1,
                   restrictions=(json.loads(sys.argv[2]),))
assert sum(t.made for t in tally.values()) == 1, tally
print(next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:')) * 1024)
"""
ONE_BLOCK = """
import json, sys, numpy as np
from neuropipe import ops
def hwm():
    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:')) * 1024
step, shape, argument = sys.argv[1], tuple(int(v) for v in sys.argv[2:5]), sys.argv[5]
data = np.random.default_rng(0).random(shape)
model = ops.MembraneModel.from_bytes(open(argument, 'rb').read()) if step == 'membrane' else None
image = (data * 255).astype(np.uint8)
open('/proc/self/clear_refs', 'w').write('5')
before = hwm()
if step == 'membrane':
    ops.predict_membrane(model, image, tile=int(sys.argv[6]), overlap=8, precision='float32')
else:
    ops.detect_cells(1.0 - data, **json.loads(argument))
print(hwm() - before)
"""


def write_source(path: Path, shape, tile=(32, 256, 256), distinct: int = 8) -> None:
    """Write a zarr volume tiled with ``distinct`` synthetic EM-like samples (cycled: generating is slow)."""
    import zarr

    samples = [ops.make_sample(tile, seed=seed, cell_diameter=14).image for seed in range(distinct)]
    array = zarr.create_array(store=str(path), shape=shape, chunks=tile, dtype="uint8")
    for index, corner in enumerate(np.ndindex(*[-(-s // t) for s, t in zip(shape, tile)])):
        box = tuple(slice(c * t, min((c + 1) * t, s)) for c, t, s in zip(corner, tile, shape))
        array[box] = samples[index % distinct][tuple(slice(0, b.stop - b.start) for b in box)]


def run_workers(count: int, settings: Settings, tables, log: Path) -> tuple[float, int]:
    """Run ``count`` worker processes until the graph is drained; return (seconds, peak RSS in bytes).

    The peak is the largest ``VmHWM`` read from ``/proc`` while the workers run (polled every
    0.1 s); ``ru_maxrss`` would not do: Linux carries it over from the parent across exec.
    """
    env = {**os.environ, "DJ_HOST": settings.host, "DJ_PORT": str(settings.port), "DJ_USER": settings.user,
           "DJ_PASS": "", "DJ_BACKEND": settings.backend, "NEUROPIPE_SCHEMA_PREFIX": settings.schema_prefix,
           "NEUROPIPE_STORE": str(settings.store), "NEUROPIPE_ZARR_ABOVE_MB": "16"}
    command = [sys.executable, "-m", "neuropipe.cli", "worker", *(f"--tables={t}" for t in tables),
               "--max-idle", "3", "--poll", "0.5", "--heartbeat", "2"]
    start = time.perf_counter()
    env["OMP_NUM_THREADS"] = str(cpu_share(count))  # as `neuropipe worker --processes N` does
    workers = [subprocess.Popen(command, env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT)
               for _ in range(count)]
    peak = 0
    while any(worker.poll() is None for worker in workers):
        peak = max([peak] + [peak_rss(worker.pid) for worker in workers if worker.poll() is None])
        time.sleep(0.1)
    if any(worker.returncode != 0 for worker in workers):
        raise SystemExit(f"a worker failed; see {log}")
    return time.perf_counter() - start, peak


def peak_rss(pid: int) -> int:
    """Return a live process's peak resident memory in bytes (``VmHWM``), 0 where it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return 0


def block_timings(membrane, detection, key: dict, shape, methods) -> dict:
    """Per block step: blocks, mean compute and bookkeeping seconds, MVx/s (from the block rows and their jobs)."""
    rows = {"membrane": (membrane.MembraneBlock & key), "detection": (detection.DetectionBlock & key)}
    per_block = {}
    for name, table in rows.items():  # detection: every parameter set, so several times the voxels
        primary = type(table)().primary_key
        durations = {tuple(job[k] for k in primary): job["duration"] for job in (type(table)().jobs & key).to_dicts()}
        jobs = table.proj("seconds").to_dicts()
        compute = np.array([job["seconds"] for job in jobs])
        overhead = np.array([durations[tuple(job[k] for k in primary)] for job in jobs]) - compute
        per_block[name] = {"blocks": len(jobs), "compute_s": round(float(compute.mean()), 3),
                           "bookkeeping_s": round(float(overhead.mean()), 3)}
        if name == "membrane":
            per_block[name]["mvx_per_s"] = round(np.prod(shape) / 1e6 / compute.sum(), 2)
    for method in methods:
        found = detection.DetectionParams.insert_params(METHODS[method])  # its key (already there)
        seconds_of = (detection.DetectionBlock & key & found).to_arrays("seconds")
        per_block["detection"][f"{method}_mvx_per_s"] = round(np.prod(shape) / 1e6 / seconds_of.sum(), 2)
    return per_block


def recorded_peak(tables) -> int:
    """Return the largest per-job peak RSS (bytes) the workers recorded in the tables' provenance."""
    from neuropipe import provenance

    return int(max(max(provenance.of(table).to_arrays("peak_rss_mb"), default=0.0) for table in tables) * 1e6)


def one_job_rss(settings: Settings, table: str, restriction: dict) -> int:
    """Return the peak RSS (bytes) of a fresh worker process that makes one block of ``table`` and stops."""
    env = {**os.environ, "DJ_HOST": settings.host, "DJ_PORT": str(settings.port), "DJ_USER": settings.user,
           "DJ_PASS": "", "DJ_BACKEND": settings.backend, "NEUROPIPE_SCHEMA_PREFIX": settings.schema_prefix,
           "NEUROPIPE_STORE": str(settings.store), "NEUROPIPE_ZARR_ABOVE_MB": "16",
           "OMP_NUM_THREADS": str(cpu_share(1))}
    command = [sys.executable, "-c", ONE_JOB, table, json.dumps(restriction)]
    output = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
    return int(output.strip().splitlines()[-1])


def interior_block(shape, block) -> dict:
    """Return the grid coordinates of a block with a full-size core and a full halo where the grid has one."""
    counts = [-(-s // b) for s, b in zip(shape, block)]
    return {name: min(1, count - 1) if count < 3 else 1 for name, count in zip(("grid_z", "grid_y", "grid_x"), counts)}


def one_block_rss(step: str, shape, argument: str) -> int:
    """Return the peak RSS (bytes) one block of ``step`` needs on its own: its kernel on its read box."""
    command = [sys.executable, "-c", ONE_BLOCK, step, *map(str, shape), argument, str(TILE)]
    return int(subprocess.run(command, check=True, capture_output=True, text=True).stdout)


def read_box(block, halo, shape) -> tuple:
    """Return the extent of a block's read box away from the volume's faces."""
    return tuple(min(b + 2 * h, s) for b, h, s in zip(block, halo, shape))


def baseline_rss() -> int:
    """Return the peak RSS (bytes) of a process that imports what a worker imports and does nothing."""
    code = ("import torch, zarr, cc3d, schemas, neuropipe.cli, neuropipe.worker; "
            "print(next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:')))")
    return int(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout) * 1024


def main() -> None:
    """Build the volume, run the blockwise graph with 1 and 2 workers, compare with whole-volume kernels."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(64, 768, 768), help="volume ZYX (default 64 768 768)")
    parser.add_argument("--block", type=int, nargs=3, default=(32, 256, 256), help="block ZYX (default 32 256 256)")
    parser.add_argument("--workers", type=int, nargs="+", default=(1, 2), help="worker counts to time (default 1 2)")
    parser.add_argument("--methods", nargs="+", default=("components", "spheres"), choices=tuple(METHODS),
                        help="detection methods to run (default both; spheres are slow on large volumes)")
    args = parser.parse_args()
    import schemas
    from neuropipe import registry
    from neuropipe.worker import pipeline_tables, run_worker

    folder = Path(tempfile.mkdtemp(prefix="bench-blockwise-"))
    shape, block = tuple(args.shape), tuple(args.block)
    write_source(folder / "volume.zarr", shape)
    train = ops.make_sample((16, 128, 128), seed=99, cell_diameter=14)
    np.savez(folder / "train.npz", image=train.image, cells=train.cells)
    model = ops.train_membrane(train.image, train.cells == 0, iterations=100, width=8, depth=2, crop=64,
                               precision="float32", progress=False, seed=0)

    results = {"shape": shape, "block": block, "runs": {}}
    for workers in args.workers:
        settings = Settings(host=os.environ.get("DJ_HOST", "127.0.0.1"), port=int(os.environ.get("DJ_PORT", 5432)),
                            user=os.environ.get("DJ_USER", "root"), backend="postgresql", store=folder / "store",
                            schema_prefix=f"benchblk_{secrets.token_hex(3)}_")
        connection = connect(settings)
        schemas.activate(settings.schema_prefix, connection)
        registry.activate(settings.schema_prefix, connection)
        volume, membrane, detection = schemas.volume, schemas.membrane, schemas.detection
        try:
            volume.Dataset.insert([dict(dataset="big", source=f"file://{folder}/volume.zarr"),
                                   dict(dataset="train", source=f"file://{folder}/train.npz#image")])
            volume.Annotation.insert1(dict(dataset="train", kind="cells", purpose="train",
                                           source=f"file://{folder}/train.npz#cells"))
            os.environ["NEUROPIPE_ZARR_ABOVE_MB"] = "16"
            volume.Blocking.insert1(dict(blocking_id="bench", size_z=block[0], size_y=block[1], size_x=block[2]))
            run_worker(pipeline_tables([volume]), max_idle=0, restrictions=({"blocking_id": "bench"},))
            training = membrane.TrainingParams.insert_params({"iterations": 100})
            membrane.MembraneModel.insert1(dict(dataset="train", **training, model=model.to_bytes(), iterations=100,
                                                train_seconds=0.0, final_loss=0.0, device="cpu"),
                                           allow_direct_insert=True)
            membrane.InferenceParams.insert_params({"tile": TILE, "overlap": 8, "precision": "float32"})
            for method in args.methods:
                detection.DetectionParams.insert_params(METHODS[method])
            interior = {**interior_block(shape, block), "blocking_id": "bench"}
            if workers == args.workers[0]:  # one block in a worker of its own, before the volume's run
                baseline = baseline_rss()
                job_needs = {"membrane": one_job_rss(settings, "MembraneBlock", interior) - baseline}
            steps = [membrane.MembraneBlock, membrane.MembraneMap, detection.DetectionBlock, detection.CellDetection]
            seconds, peak = run_workers(workers, settings, [step.__name__ for step in steps],
                                        folder / f"workers{workers}.log")
            peak = max(peak, recorded_peak(steps))
            key = {"dataset": "big", "blocking_id": "bench"}
            per_block = block_timings(membrane, detection, key, shape, args.methods)
            model_file = folder / "model.bin"
            model_file.write_bytes(model.to_bytes())
            needs = {"membrane": one_block_rss("membrane", read_box(block, (0, TILE - 1, TILE - 1), shape),
                                               str(model_file))}
            for method in args.methods:
                found = detection.DetectionParams.insert_params(METHODS[method])
                halo = detection.DetectionBlock().halo({**key, **found})
                needs[method] = one_block_rss(method, read_box(block, halo, shape), json.dumps(METHODS[method]))
            if workers == args.workers[0]:
                for method in args.methods:  # a parameter set of its own, so its blocks are still to do
                    variant = detection.DetectionParams.insert_params(
                        {**METHODS[method], "threshold": METHODS[method]["threshold"] + 0.01})
                    job_needs[method] = one_job_rss(settings, "DetectionBlock", {**interior, **variant}) - baseline
            working_set = max(job_needs.values())
            results["runs"][workers] = {"seconds": round(seconds, 1), "peak_rss_mb": round(peak / 1e6, 1),
                                        "per_block": per_block}
            if workers == args.workers[0]:
                results["working_set_mb"] = round(working_set / 1e6, 1)
                results["one_block_job_mb"] = {step: round(value / 1e6, 1) for step, value in job_needs.items()}
                results["one_block_kernel_mb"] = {step: round(value / 1e6, 1) for step, value in needs.items()}
                results["baseline_rss_mb"] = round(baseline / 1e6, 1)
                results["peak_rss_over_working_set"] = round((peak - baseline) / working_set, 2)
                results["peak_rss_over_kernel_alone"] = round((peak - baseline) / max(needs.values()), 2)
                results["peak_rss_mb"] = round(peak / 1e6, 1)
                results["volume_over_working_set"] = round(np.prod(shape) * 4 / working_set, 1)
                image = np.asarray(volume.Volume.open_image({"dataset": "big"}))
                start = time.perf_counter()
                whole_map = ops.predict_membrane(model, image, tile=TILE, overlap=8, precision="float32")
                membrane_rate = np.prod(shape) / 1e6 / (time.perf_counter() - start)
                blockwise_map = np.asarray(open_stored((membrane.MembraneMap & key).fetch1("probability")))
                interior = 1.0 - blockwise_map.astype(np.float64)
                start = time.perf_counter()
                whole_cells = ops.detect_cells(interior, **COMPONENTS)
                components_rate = np.prod(shape) / 1e6 / (time.perf_counter() - start)
                spheres_rate = float("nan")
                if "spheres" in args.methods:
                    start = time.perf_counter()
                    ops.detect_cells(interior, **SPHERES)
                    spheres_rate = np.prod(shape) / 1e6 / (time.perf_counter() - start)
                components = detection.DetectionParams.insert_params(COMPONENTS)  # its key (already there)
                labels = np.asarray(open_stored((detection.CellDetection & key & components).fetch1("labels")))
                results["whole_mvx_per_s"] = {"membrane": round(membrane_rate, 2),
                                              "components": round(components_rate, 2),
                                              "spheres": round(spheres_rate, 2)}
                results["blockwise_equals_whole"] = bool(
                    np.allclose(blockwise_map, whole_map, atol=1e-6, rtol=0)
                    and np.array_equal(labels, whole_cells.labels))
                results["max_map_difference"] = float(np.abs(blockwise_map - whole_map).max())
        finally:
            schemas.drop()
            registry.drop()
    print(json.dumps(results, indent=1, default=str))
    print(json.dumps({"peak_rss_over_working_set": results["peak_rss_over_working_set"],
                      "peak_rss_over_kernel_alone": results["peak_rss_over_kernel_alone"],
                      "working_set_mb": results["working_set_mb"],
                      "peak_rss_mb": results["peak_rss_mb"], "baseline_rss_mb": results["baseline_rss_mb"],
                      "volume_over_working_set": results["volume_over_working_set"],
                      "blockwise_equals_whole": results["blockwise_equals_whole"],
                      "seconds_by_workers": {w: r["seconds"] for w, r in results["runs"].items()},
                      "whole_mvx_per_s": results["whole_mvx_per_s"],
                      "blockwise": results["runs"][args.workers[0]]["per_block"]}))


if __name__ == "__main__":
    main()
