"""Blockwise maps and detections on a volume many blocks large: worker memory, throughput, bookkeeping.

A synthetic EM-like volume (tiles of ``ops.make_sample``) is written as a zarr source and
imported (as chunked zarr); a small U-Net trained on a separate small sample is applied to it
block by block, and cells are detected as connected components (stitched) and as spheres,
by ``neuropipe worker`` processes on the local PostgreSQL server (127.0.0.1:5432, or
``DJ_HOST``/``DJ_PORT``).  Reported, from the same run:

- ``peak_rss_over_working_set``: how far a worker that serves the whole volume grows above its
  own resident memory before its first job (its peak: ``VmHWM``, polled, and as each job's
  provenance records it), over one block's working set: how far a fresh worker process that
  makes one interior block (read, compute, write, commit) and stops grows above its own, the
  largest over the block steps.  Each process is its own baseline (imports, torch alone is
  some 400 MB, and the connection), so no separately measured process enters the ratio;
- ``peak_rss_over_kernel_alone``: the same peak over the kernel alone on one block's read box
  in a fresh process (no read, write or database), a stricter yardstick;
- ``volume_over_working_set``: the bytes of the volume's float32 map over that working set;
- MVx/s of the blockwise steps (volume voxels over the summed ``seconds`` of their block rows)
  against the whole-volume kernels (``predict_membrane``, ``detect_cells``) on the same volume,
  timed before the blocks and after them;
- ``ratios``: each stage's rate over the whole-volume kernel's, the stage being its blocks'
  compute plus its assembling job (``MembraneMap``, ``CellDetection``) whole:
  ``membrane_blockwise_over_whole`` and ``components_stages_over_detect_cells``; ``..._cpu`` the
  same in CPU seconds from the jobs' provenance (the blocks' reads and writes included);
- per block: compute seconds against bookkeeping (the job's duration less its compute: claim
  aside, that is the read, the write and the commit);
- ``blockwise_equals_whole``: the map within 1e-6 and the component labels identical.

    python bench/bench_blockwise.py [--shape 64 768 768] [--block 32 256 256] [--workers 1 2]

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import atexit
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
from neuropipe.worker.supervisor import cpu_share

COMPONENTS = {"method": "components", "threshold": 0.5, "min_voxels": 20, "max_cells": 1_000_000}
SPHERES = {"method": "spheres", "threshold": 0.3, "stop": 0.4, "sphere_size": 10, "dilation": 2,
           "max_cells": 1_000_000}
TILE = 64
METHODS = {"components": COMPONENTS, "spheres": SPHERES}
WORKER = """
import json, os, sys
import schemas
from neuropipe.worker import registry, resources
from neuropipe.config import load_settings
from neuropipe.database import connect
from neuropipe.pipeline import pipeline_tables
from neuropipe.worker import run_worker
resources.limit_malloc_arenas()
settings = load_settings()
connection = connect(settings)
schemas.activate(settings.schema_prefix, connection)
registry.activate(settings.schema_prefix, connection)
tables = pipeline_tables([schemas], json.loads(sys.argv[1]))
max_jobs = int(sys.argv[3]) or None
with open(sys.argv[4], 'w') as ready:  # this process's resident memory before its first job
    status = open('/proc/self/status').read()
    json.dump({'pid': os.getpid(), 'ready': int(status.split('VmRSS:')[1].split()[0]) * 1024}, ready)
tally = run_worker(tables, max_idle=0 if max_jobs else 3, poll=0.5, heartbeat=2, max_jobs=max_jobs,
                   restrictions=(json.loads(sys.argv[2]),) if sys.argv[2] != 'null' else ())
assert not max_jobs or sum(t.made for t in tally.values()) == max_jobs, tally
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

    tile = tuple(min(t, s) for t, s in zip(tile, shape))
    corners = list(np.ndindex(*[-(-s // t) for s, t in zip(shape, tile)]))
    samples = [ops.make_sample(tile, seed=seed, cell_diameter=14).image for seed in range(min(distinct, len(corners)))]
    array = zarr.create_array(store=str(path), shape=shape, chunks=tile, dtype="uint8")
    for index, corner in enumerate(corners):
        box = tuple(slice(c * t, min((c + 1) * t, s)) for c, t, s in zip(corner, tile, shape))
        array[box] = samples[index % len(samples)][tuple(slice(0, b.stop - b.start) for b in box)]


def worker_env(settings: Settings, count: int) -> dict:
    """Return the environment of a bench worker: the bench's schema and store, threads as ``--processes`` sets."""
    store = {name: str(value) for name, value in (("NEUROPIPE_STORE_ENDPOINT", settings.store_endpoint),
                                                 ("NEUROPIPE_STORE_REGION", settings.store_region),
                                                 ("NEUROPIPE_STORE_ACCESS_KEY", settings.store_access_key),
                                                 ("NEUROPIPE_STORE_SECRET_KEY", settings.store_secret_key)) if value}
    return {**os.environ, "DJ_HOST": settings.host, "DJ_PORT": str(settings.port), "DJ_USER": settings.user,
            "DJ_PASS": "", "DJ_BACKEND": settings.backend, "NEUROPIPE_SCHEMA_PREFIX": settings.schema_prefix,
            "NEUROPIPE_STORE": str(settings.store), **store, "NEUROPIPE_ZARR_ABOVE_MB": "16",
            "OMP_NUM_THREADS": str(cpu_share(count))}


def object_store(url: str, folder: Path) -> tuple[str, dict]:
    """Return the object store to compare with the file store, and its settings.

    ``url`` ``moto``: start moto's S3 server on a free local port (``pip install 'moto[server]'``)
    and use a bucket of it; else an ``s3://``/``gs://`` URL, reached as ``NEUROPIPE_STORE_*``
    (or AWS's variables) say.
    """
    names = {"store_endpoint": "NEUROPIPE_STORE_ENDPOINT", "store_region": "NEUROPIPE_STORE_REGION",
             "store_access_key": "NEUROPIPE_STORE_ACCESS_KEY", "store_secret_key": "NEUROPIPE_STORE_SECRET_KEY"}
    if url != "moto":
        return url, {name: os.environ.get(variable) for name, variable in names.items()}
    import socket

    import s3fs

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=open(folder / "moto.log", "wb"), stderr=subprocess.STDOUT)
    atexit.register(server.terminate)
    options = {"store_endpoint": f"http://127.0.0.1:{port}", "store_region": "us-east-1",
               "store_access_key": "bench", "store_secret_key": "bench-secret"}
    filesystem = s3fs.S3FileSystem(key="bench", secret="bench-secret",
                                   client_kwargs={"endpoint_url": options["store_endpoint"]})
    for _ in range(100):
        try:
            filesystem.mkdir("neuropipe-bench")
            break
        except Exception:  # the server is still starting
            time.sleep(0.1)
    return f"s3://neuropipe-bench/{secrets.token_hex(3)}", options


def store_throughput(settings: Settings, folder: Path, source: str, model, block, methods, log: Path) -> dict:
    """Run the blockwise graph with one worker, its arrays in ``settings.store``; return its rates.

    ``mvx_per_s``: the volume's voxels over the run's wall seconds (reads, compute, writes and
    commits of every block and assembly); per stage, over the seconds its jobs took.
    """
    import schemas
    from neuropipe.worker import registry

    try:
        register_volume_and_model(settings, folder, source, model, block)
        schemas.membrane.InferenceParams.insert_params({"tile": TILE, "overlap": 8, "precision": "float32"})
        for method in methods:
            schemas.detection.DetectionParams.insert_params(METHODS[method])
        steps = ["MembraneBlock", "MembraneMap", "DetectionBlock", "CellDetection"]
        seconds, _ = run_workers(1, settings, steps, log)
        stages = stage_seconds(schemas.membrane, schemas.detection, {"dataset": "big", "blocking_id": "bench"},
                               methods)
        voxels = float(np.prod(schemas.volume.Volume.open_image({"dataset": "big"}).shape)) / 1e6
        return {"seconds": round(seconds, 2), "mvx_per_s": round(voxels / seconds, 3),
                "stage_mvx_per_s": {name: round(voxels / (times["blocks_s"] + times["assembly_s"]), 3)
                                    for name, times in stages.items()}}
    finally:
        schemas.drop()
        registry.drop()


def run_workers(count: int, settings: Settings, tables, log: Path, restriction=None, max_jobs: int = 0):
    """Run ``count`` worker processes until the graph is drained (or each made ``max_jobs``).

    Returns (seconds, {pid: (resident bytes before the first job, peak bytes, {table: peak bytes})}).  The peak is
    the largest ``VmHWM`` read from ``/proc`` while the worker runs (polled every 0.1 s) or
    recorded by its jobs' provenance (each job resets ``VmHWM``, so the process's own final
    value is only its last job's); ``ru_maxrss`` would not do: Linux carries it over from the
    parent across exec.
    """
    command = [sys.executable, "-c", WORKER, json.dumps(list(tables)), json.dumps(restriction), str(max_jobs)]
    start = time.perf_counter()
    ready = [log.with_suffix(f".ready{index}") for index in range(count)]
    workers = [subprocess.Popen([*command, str(path)], env=worker_env(settings, count), stdout=open(log, "ab"),
                                stderr=subprocess.STDOUT) for path in ready]
    polled = {worker.pid: 0 for worker in workers}
    while any(worker.poll() is None for worker in workers):
        for worker in workers:
            polled[worker.pid] = max(polled[worker.pid], peak_rss(worker.pid) if worker.poll() is None else 0)
        time.sleep(0.1)
    if any(worker.returncode != 0 for worker in workers):
        raise SystemExit(f"a worker failed; see {log}")
    seconds = time.perf_counter() - start
    memory = {}
    for path in ready:
        found = json.loads(path.read_text())
        peaks = recorded_peaks(tables, found["pid"])
        memory[found["pid"]] = (found["ready"], max(polled[found["pid"]], *peaks.values()), peaks)
    return seconds, memory


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


def stage_seconds(membrane, detection, key: dict, methods) -> dict:
    """Seconds of each blockwise stage: its blocks' and its assembling job's, wall and CPU.

    ``blocks_s``: the blocks' compute (``seconds``, as :func:`block_timings` reports them);
    ``assembly_s``: the assembling job's (``MembraneMap``, ``CellDetection``) duration, whole
    (its reads and writes are the assembly).  ``blocks_cpu_s`` and ``assembly_cpu_s``: the CPU
    seconds the jobs' provenance records (the blocks' reads, writes and commits included), which
    other work on a shared machine disturbs less than wall time.
    """
    from neuropipe import provenance

    def measured(table, restriction) -> tuple:
        query = table & key & restriction
        wall = query.to_arrays("seconds").sum() if "seconds" in table().heading.names else \
            (table().jobs & key & restriction & "status = 'success'").to_arrays("duration").sum()
        return float(wall), float((provenance.of(table) & key & restriction).to_arrays("cpu_seconds").sum())

    tables = {"membrane": (membrane.MembraneBlock, membrane.MembraneMap, {})}
    for method in methods:  # a method's parameter set: its key (already there)
        tables[method] = (detection.DetectionBlock, detection.CellDetection,
                          detection.DetectionParams.insert_params(METHODS[method]))
    found = {}
    for name, (blocks, assembly, restriction) in tables.items():
        (blocks_s, blocks_cpu), (assembly_s, assembly_cpu) = measured(blocks, restriction), measured(assembly,
                                                                                                  restriction)
        found[name] = {"blocks_s": round(blocks_s, 3), "assembly_s": round(assembly_s, 3),
                       "blocks_cpu_s": round(blocks_cpu, 3), "assembly_cpu_s": round(assembly_cpu, 3)}
    return found


def whole_volume_seconds(model, image) -> tuple[dict, np.ndarray]:
    """Time the whole-volume kernels on ``image``: ``predict_membrane``, then ``detect_cells`` on its map.

    Returns (wall and CPU seconds by step, the map).
    """
    start, cpu = time.perf_counter(), time.process_time()
    probability = ops.predict_membrane(model, image, tile=TILE, overlap=8, precision="float32")
    seconds = {"membrane": time.perf_counter() - start, "membrane_cpu": time.process_time() - cpu}
    interior = 1.0 - probability.astype(np.float64)
    start, cpu = time.perf_counter(), time.process_time()
    ops.detect_cells(interior, **COMPONENTS)
    seconds.update(components=time.perf_counter() - start, components_cpu=time.process_time() - cpu)
    return seconds, probability


def stage_ratios(stages: dict, whole: dict, methods) -> dict:
    """Blockwise rate over whole-volume rate per stage: the whole kernel's seconds over the stage's (blocks + assembly).

    ``membrane_blockwise_over_whole``: membrane blocks and map against ``predict_membrane``;
    ``components_stages_over_detect_cells``: detection blocks and their assembly against
    ``detect_cells`` on the whole map (the components method: the one whose blocks are stitched).
    Wall seconds (the blocks' compute), and ``..._cpu``: CPU seconds (the blocks' whole jobs).
    """
    def over(name: str, cpu: str = "") -> float:
        stage = stages[name]
        return round(whole[name + cpu] / (stage[f"blocks{cpu}_s"] + stage[f"assembly{cpu}_s"]), 3)

    ratios = {}
    for name, label in (("membrane", "membrane_blockwise_over_whole"),
                        ("components", "components_stages_over_detect_cells")):
        if name in stages:
            ratios.update({label: over(name), f"{label}_cpu": over(name, "_cpu")})
    return ratios


def recorded_peaks(tables, pid: int) -> dict:
    """Return, per table, the largest per-job peak RSS (bytes) that worker ``pid`` recorded in its provenance."""
    import schemas
    from neuropipe import provenance
    from neuropipe.pipeline import pipeline_tables

    return {table.__name__: int(max((provenance.of(table) & {"pid": pid}).to_arrays("peak_rss_mb"), default=0) * 1e6)
            for table in pipeline_tables([schemas], tables)}


def growth(memory: dict) -> int:
    """Return the most any one worker grew above its resident memory before its first job (bytes)."""
    return max(peak - ready for ready, peak, _ in memory.values())


def register_volume_and_model(settings: Settings, folder: Path, source: str, model, block=None) -> None:
    """Bind the pipeline to ``settings``, import a volume and register a model to apply to it.

    Dataset ``big`` reads ``source``; the training sample lies in ``folder``; ``model`` was
    trained on it and is inserted as made (no training job).  ``block`` (ZYX): cut the volume
    into blocks of that shape (blocking ``bench``) instead of the default.
    """
    import schemas
    from neuropipe.pipeline import pipeline_tables
    from neuropipe.worker import registry, run_worker

    connection = connect(settings)
    schemas.activate(settings.schema_prefix, connection)
    registry.activate(settings.schema_prefix, connection)
    volume, membrane = schemas.volume, schemas.membrane
    volume.Dataset.insert([dict(dataset="big", source=source),
                           dict(dataset="train", source=f"file://{folder}/train.npz#image")])
    volume.Annotation.insert1(dict(dataset="train", kind="cells", purpose="train",
                                   source=f"file://{folder}/train.npz#cells"))
    if block is not None:
        volume.Blocking.insert1(dict(blocking_id="bench", size_z=block[0], size_y=block[1], size_x=block[2]))
    run_worker(pipeline_tables([volume]), max_idle=0,
               restrictions=({"blocking_id": "bench"},) if block is not None else ())
    training = membrane.TrainingParams.insert_params({"iterations": 100})
    membrane.MembraneModel.insert1(dict(dataset="train", **training, model=model.to_bytes(), iterations=100,
                                        train_seconds=0.0, final_loss=0.0, device="cpu"), allow_direct_insert=True)


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


def membrane_read_box(interior: dict, block, shape) -> tuple:
    """Return the extent of what the membrane block at grid coordinates ``interior`` reads (its tiles)."""
    from neuropipe.ops.grid import core_box
    from neuropipe.ops.unet import MembraneTiling

    core = core_box([interior[name] for name in ("grid_z", "grid_y", "grid_x")], shape, block)
    return tuple(stop - start for start, stop in MembraneTiling(shape, block, tile=TILE, overlap=8).read_box(core))


def compare_stores(store: str, folder: Path, block, model, methods) -> dict:
    """Run the graph with its arrays in a directory and in the object store ``store``, interleaved, twice each.

    Returns both runs' rates and ``object_over_file``: the better object-store rate over the
    better file-store rate (end to end, one worker).
    """
    url, options = object_store(store, folder)
    rates = {"file": [], "object": []}
    for repeat in range(2):  # interleaved: what the machine does meanwhile falls on both alike
        for kind in ("file", "object"):
            where = {"store": folder / f"store-{repeat}"} if kind == "file" else {"store": f"{url}/{repeat}", **options}
            settings = Settings(host=os.environ.get("DJ_HOST", "127.0.0.1"), port=int(os.environ.get("DJ_PORT", 5432)),
                                user=os.environ.get("DJ_USER", "root"), backend="postgresql",
                                schema_prefix=f"benchstore_{secrets.token_hex(3)}_", **where)
            rates[kind].append(store_throughput(settings, folder, f"file://{folder}/volume.zarr", model, block,
                                                methods, folder / f"store-{kind}.log"))
    best = {kind: max(run["mvx_per_s"] for run in runs) for kind, runs in rates.items()}
    return {"object_store": "moto (local S3 server)" if store == "moto" else url, "runs": rates,
            "object_over_file": round(best["object"] / best["file"], 3)}


def main() -> None:
    """Build the volume, run the blockwise graph with 1 and 2 workers, compare with whole-volume kernels."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(64, 768, 768), help="volume ZYX (default 64 768 768)")
    parser.add_argument("--block", type=int, nargs=3, default=(32, 256, 256), help="block ZYX (default 32 256 256)")
    parser.add_argument("--workers", type=int, nargs="+", default=(1, 2), help="worker counts to time (default 1 2)")
    parser.add_argument("--methods", nargs="+", default=("components", "spheres"), choices=tuple(METHODS),
                        help="detection methods to run (default both; spheres are slow on large volumes)")
    parser.add_argument("--store", metavar="URL",
                        help="also run the graph with its arrays in this object store (s3://bucket/prefix, reached as "
                             "NEUROPIPE_STORE_* say; 'moto': a local moto S3 server) and in a directory, one after "
                             "the other, twice; report both rates and their ratio")
    args = parser.parse_args()
    import schemas
    from neuropipe.worker import registry

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
        volume, membrane, detection = schemas.volume, schemas.membrane, schemas.detection
        try:
            os.environ["NEUROPIPE_ZARR_ABOVE_MB"] = "16"
            register_volume_and_model(settings, folder, f"file://{folder}/volume.zarr", model, block)
            membrane.InferenceParams.insert_params({"tile": TILE, "overlap": 8, "precision": "float32"})
            for method in args.methods:
                detection.DetectionParams.insert_params(METHODS[method])
            interior = {**interior_block(shape, block), "blocking_id": "bench"}
            if workers == args.workers[0]:  # the whole-volume kernels, timed before the blocks and after them
                image = np.asarray(volume.Volume.open_image({"dataset": "big"}))
                whole_seconds = [whole_volume_seconds(model, image)[0]]
                # one block in a worker of its own, before the volume's run
                job_needs = {"membrane": growth(run_workers(1, settings, ["MembraneBlock"], folder / "one.log",
                                                            interior, max_jobs=1)[1])}
            steps = ["MembraneBlock", "MembraneMap", "DetectionBlock", "CellDetection"]
            seconds, memory = run_workers(workers, settings, steps, folder / f"workers{workers}.log")
            key = {"dataset": "big", "blocking_id": "bench"}
            per_block = block_timings(membrane, detection, key, shape, args.methods)
            stages = stage_seconds(membrane, detection, key, args.methods)
            model_file = folder / "model.bin"
            model_file.write_bytes(model.to_bytes())
            needs = {"membrane": one_block_rss("membrane", membrane_read_box(interior, block, shape),
                                               str(model_file))}
            for method in args.methods:
                found = detection.DetectionParams.insert_params(METHODS[method])
                halo = detection.DetectionBlock().halo({**key, **found})
                needs[method] = one_block_rss(method, read_box(block, halo, shape), json.dumps(METHODS[method]))
            if workers == args.workers[0]:
                for method in args.methods:  # a parameter set of its own, so its blocks are still to do
                    variant = detection.DetectionParams.insert_params(
                        {**METHODS[method], "threshold": METHODS[method]["threshold"] + 0.01})
                    job_needs[method] = growth(run_workers(1, settings, ["DetectionBlock"], folder / "one.log",
                                                           {**interior, **variant}, max_jobs=1)[1])
            working_set = max(job_needs.values())
            results["runs"][workers] = {"seconds": round(seconds, 1), "per_block": per_block, "stages": stages,
                                        "peak_rss_mb": round(max(peak for _, peak, _ in memory.values()) / 1e6, 1),
                                        "growth_mb": round(growth(memory) / 1e6, 1),
                                        "growth_by_step_mb": {step: round(max(peaks[step] - ready for ready, _, peaks
                                                                              in memory.values()) / 1e6, 1)
                                                              for step in steps}}
            if workers == args.workers[0]:
                results["working_set_mb"] = round(working_set / 1e6, 1)
                results["one_block_job_mb"] = {step: round(value / 1e6, 1) for step, value in job_needs.items()}
                results["one_block_kernel_mb"] = {step: round(value / 1e6, 1) for step, value in needs.items()}
                results["ready_rss_mb"] = round(min(ready for ready, _, _ in memory.values()) / 1e6, 1)
                results["peak_rss_over_working_set"] = round(growth(memory) / working_set, 2)
                results["peak_rss_over_kernel_alone"] = round(growth(memory) / max(needs.values()), 2)
                results["peak_rss_mb"] = results["runs"][workers]["peak_rss_mb"]
                results["volume_over_working_set"] = round(np.prod(shape) * 4 / working_set, 1)
                image = np.asarray(volume.Volume.open_image({"dataset": "big"}))
                timing, whole_map = whole_volume_seconds(model, image)
                whole_seconds.append(timing)
                blockwise_map = np.asarray(open_stored((membrane.MembraneMap & key).fetch1("probability")))
                interior = 1.0 - blockwise_map.astype(np.float64)
                whole_cells = ops.detect_cells(interior, **COMPONENTS)
                mean_seconds = {name: float(np.mean([timing[name] for timing in whole_seconds]))
                                for name in whole_seconds[0]}
                membrane_rate = np.prod(shape) / 1e6 / mean_seconds["membrane"]
                components_rate = np.prod(shape) / 1e6 / mean_seconds["components"]
                results["whole_seconds"] = [{name: round(value, 3) for name, value in timing.items()}
                                            for timing in whole_seconds]
                results["ratios"] = stage_ratios(stages, mean_seconds, args.methods)
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
    if args.store:
        results["stores"] = compare_stores(args.store, folder, block, model, args.methods)
    print(json.dumps(results, indent=1, default=str))
    print(json.dumps({"peak_rss_over_working_set": results["peak_rss_over_working_set"],
                      "peak_rss_over_kernel_alone": results["peak_rss_over_kernel_alone"],
                      "working_set_mb": results["working_set_mb"],
                      "peak_rss_mb": results["peak_rss_mb"], "ready_rss_mb": results["ready_rss_mb"],
                      "volume_over_working_set": results["volume_over_working_set"],
                      "blockwise_equals_whole": results["blockwise_equals_whole"],
                      "seconds_by_workers": {w: r["seconds"] for w, r in results["runs"].items()},
                      "whole_mvx_per_s": results["whole_mvx_per_s"], "ratios": results["ratios"],
                      "stages": results["runs"][args.workers[0]]["stages"],
                      "blockwise": results["runs"][args.workers[0]]["per_block"],
                      **({"object_store_over_file": results["stores"]["object_over_file"]} if args.store else {})}))


if __name__ == "__main__":
    main()
