"""The GPU path in one short run: U-Net speed on the GPU against the CPU, ISBI 2012 after GPU minutes, a GPU worker.

Made to be run once on a lent GPU machine: about 12 minutes with the defaults, the ISBI
training's ``--minutes`` (10) most of it; where one command may run at most 10 minutes, give
``--minutes 5`` and say so beside the figure. It measures:

- U-Net training steps per second and inference MVx/s (``train_membrane``'s defaults, the
  settings measured best on ISBI 2012; bfloat16 where the device computes it natively) on
  the CPU and on the GPU, on the ISBI 2012 stack (a synthetic one where it is absent);
- the held-out ISBI pixel error (train on slices 0-19, score 20-29, no test-time
  augmentation) after ``--minutes`` of GPU training;
- a ``neuropipe worker --gpus all`` and a ``--gpus none`` worker, side by side, on the toy
  pipeline's ``GpuSquare`` (``resources = {"gpu": True}``): the GPU worker makes every row,
  the CPU-only worker none.

Where no CUDA device is visible it says so, measures the CPU side, and exits 0.

    python bench/bench_gpu.py [--minutes 10] [--steps 200] [--backend auto|postgresql|mysql|embedded]

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import secrets
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "support"))
sys.path.insert(0, str(ROOT / "bench"))

from bench_isbi import DATA  # noqa: E402
from overhead import settings_for  # noqa: E402

from neuropipe import ops  # noqa: E402
from neuropipe.config import Settings  # noqa: E402
from neuropipe.database import server_address  # noqa: E402
from neuropipe.ops.unet import _resolve_precision  # noqa: E402


def stack() -> tuple[np.ndarray, np.ndarray, str]:
    """Return ISBI 2012 images and membrane labels, or a synthetic stack of the same size where absent."""
    if DATA.is_file():
        data = np.load(DATA)
        return data["image"], data["membrane"], "isbi2012"
    sample = ops.make_sample((30, 512, 512), seed=0)
    return sample.image, sample.cells == 0, "synthetic"


def speed(device: str, images, labels, steps: int) -> dict:
    """Return training steps/s and inference MVx/s of the U-Net on ``device``."""
    precision = _resolve_precision("auto", torch.device(device))
    model = ops.train_membrane(images[:20], labels[:20], iterations=steps, device=device, precision=precision,
                               progress=False, seed=0)
    volume = images[20:30]
    ops.predict_membrane(model, volume[:1], device=device, precision=precision)  # warm-up (kernels, allocator)
    start = time.perf_counter()
    ops.predict_membrane(model, volume, device=device, precision=precision)
    seconds = time.perf_counter() - start
    return {"precision": precision, "train_steps_per_s": round(model.iterations / model.train_seconds, 2),
            "inference_mvx_per_s": round(volume.size / 1e6 / seconds, 2)}


def isbi_after(minutes: float, images, labels) -> dict:
    """Train on the GPU for ``minutes``; return the held-out pixel error and the steps it ran."""
    model = ops.train_membrane(images[:20], labels[:20], minutes=minutes, device="cuda", progress=False, seed=0)
    error = ops.pixel_scores(ops.predict_membrane(model, images[20:30], device="cuda"), labels[20:30]).pixel_error
    return {"minutes": minutes, "iterations": model.iterations, "pixel_error": round(float(error), 4)}


def worker_settings(backend: str) -> Settings:
    """Return settings of ``backend``; ``auto``: the local PostgreSQL server where one listens, else the embedded one.

    A lent GPU machine need not run a database server; the embedded PostgreSQL comes with the
    package.
    """
    if backend == "auto":
        try:
            socket.create_connection(("127.0.0.1", 5432), timeout=1).close()
            backend = "postgresql"
        except OSError:
            backend = "embedded"
    if backend != "embedded":
        return settings_for(backend)
    return server_address(Settings(host=None, store=Path(tempfile.mkdtemp(prefix="bench-gpu-store-"))))


def gpu_worker(backend: str, jobs: int = 20) -> dict:
    """Run a ``--gpus all`` and a ``--gpus none`` worker on ``GpuSquare``; return the rows each made."""
    from worker_runs import toy_schema, worker_process

    from neuropipe import provenance

    settings = dataclasses.replace(worker_settings(backend), schema_prefix=f"gpubench_{secrets.token_hex(3)}_")
    logs = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    with toy_schema(settings) as toy:
        toy.Item.insert([{"item": item} for item in range(jobs)])
        workers = {spec: worker_process(settings, logs / f"{spec}.log", "--gpus", spec, "--max-idle", "3",
                                        tables=("GpuSquare",)) for spec in ("none", "all")}
        codes = {spec: process.wait(timeout=300) for spec, process in workers.items()}
        made = provenance.of(toy.GpuSquare).to_arrays("pid") if len(toy.GpuSquare()) else np.zeros(0)
    by_cpu_worker = int(np.sum(made == workers["none"].pid))  # the GPU worker's rows come from its per-GPU child
    made_by = {"none": by_cpu_worker, "all": len(made) - by_cpu_worker}
    return {"exit_codes": codes, "rows": jobs, "made_by": made_by, "logs": str(logs)}


def main() -> None:
    """Measure what this machine allows; print the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="GPU training budget for the ISBI figure")
    parser.add_argument("--steps", type=int, default=200, help="training steps timed on each device")
    parser.add_argument("--backend", choices=("auto", "postgresql", "mysql", "embedded"), default="auto",
                        help="database of the worker check (default: local PostgreSQL, else the embedded one)")
    args = parser.parse_args()
    images, labels, data = stack()
    gpu = torch.cuda.is_available()
    result = {"data": data, "gpu": torch.cuda.get_device_name(0) if gpu else None,
              "cpu": speed("cpu", images, labels, args.steps)}
    print(f"CPU ({result['cpu']['precision']}): {result['cpu']}", flush=True)
    if gpu:
        result["cuda"] = speed("cuda", images, labels, args.steps)
        print(f"GPU ({result['cuda']['precision']}): {result['cuda']}", flush=True)
        result["speedup"] = {name: round(result["cuda"][name] / result["cpu"][name], 1)
                             for name in ("train_steps_per_s", "inference_mvx_per_s")}
        if data == "isbi2012" and args.minutes > 0:
            result["isbi"] = isbi_after(args.minutes, images, labels)
            print(f"ISBI 2012 after {args.minutes} GPU minutes: {result['isbi']}", flush=True)
    else:
        print("no CUDA device is visible: the GPU figures and the ISBI GPU run are left out; "
              "the --gpus all worker should refuse to start, saying so")
    result["worker"] = gpu_worker(args.backend)
    print(f"workers on GpuSquare: {result['worker']}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
