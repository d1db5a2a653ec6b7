"""How throughput scales with workers: CPU-bound jobs on 1 and 2 workers, trivial jobs on 1 and 16.

Real ``neuropipe worker`` processes on the toy pipeline (``tests/support/toy_pipeline.py``), on
one server (``--backend``):

- ``Busy`` (a fixed amount of CPU work per job, ``--rounds`` sha256 rounds): jobs per second
  with 1 worker and with 2 (this machine has 2 cores); the speed-up should be near 2;
- ``Gated`` with no gates (a trivial job that notes each call of its ``make()``): jobs per
  second with 1 worker and with 16, and whether any key was made twice.

The fleet starts together: the jobs are queued once every worker has registered and is
looking for work. Throughput is measured while every worker of the fleet is working: from the
latest first job start of any worker to the earliest last job end, as the jobs' provenance
records them (jobs counted by the part of each that falls in that window), so start-up and
the tail where some have run out of jobs are left out.

    python bench/scaling.py [--backend postgresql|mysql] [--cpu-jobs 60] [--trivial-jobs 20000] [--many 16]

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import secrets
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "support"))
sys.path.insert(0, str(ROOT / "bench"))

from overhead import settings_for  # noqa: E402
from worker_runs import toy_schema, worker_process  # noqa: E402

from neuropipe import provenance  # noqa: E402
from neuropipe.worker import registry  # noqa: E402


def throughput(settings, table: str, jobs: int, workers: int, **environment) -> dict:
    """Run ``workers`` worker processes on ``jobs`` jobs of ``table``; return jobs/s and calls of make() per key.

    The jobs are queued once every worker has registered and is looking for work, so the
    fleet starts together; once all are made, the workers are stopped (SIGTERM: each
    finishes what it holds and exits 0).
    """
    settings = dataclasses.replace(settings, schema_prefix=f"scale_{secrets.token_hex(3)}_")
    state = Path(tempfile.mkdtemp(prefix="bench-scaling-"))
    with toy_schema(settings) as toy:
        fleet = [worker_process(settings, state / f"worker{index}.log", tables=(table,), TOY_STATE=state,
                                **environment) for index in range(workers)]
        target = getattr(toy, table)
        try:
            wait_for(lambda: len(registry.Worker & "status='running'") == workers, f"{workers} workers to start",
                     fleet, state)
            toy.Item.insert([{"item": item} for item in range(jobs)])
            wait_for(lambda: len(target()) == jobs, f"{jobs} jobs of {table} to be made", fleet, state)
        finally:
            for process in fleet:
                process.send_signal(signal.SIGTERM)
        if any(process.wait() != 0 for process in fleet):
            raise SystemExit(f"a worker failed; see {state}")
        start, end, pid = provenance.of(target).to_arrays("start_time", "end_time", "pid")
    calls = [len(path.read_text().split()) for path in state.glob("*.attempts")]
    rate, overlapped = rate_while_all_work(start, end, pid)
    if not overlapped:
        print(f"note: the {workers} workers on {table} never all worked at once (too few jobs to measure a fleet); "
              "the rate is over the whole run", file=sys.stderr)
    return {"jobs_per_s": rate, "overlapped": overlapped, "most_calls_per_key": max(calls, default=1)}


def wait_for(condition, what: str, fleet, state: Path, timeout: float = 600) -> None:
    """Poll ``condition`` every 0.1 s until it holds; stop if a worker exits or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while not condition():
        if any(process.poll() is not None for process in fleet):
            raise SystemExit(f"a worker exited while waiting for {what}; see {state}")
        if time.monotonic() > deadline:
            raise SystemExit(f"gave up waiting for {what}; see {state}")
        time.sleep(0.1)


def rate_while_all_work(start: np.ndarray, end: np.ndarray, pid: np.ndarray) -> tuple[float, bool]:
    """Return jobs per second in the window where every worker (``pid``) had started and none had finished.

    Returns the rate and whether that window exists. Where it does not (so few jobs that one
    worker made them all, or each finished before the next began), the rate is over the
    whole run, from the first start to the last end.
    """
    start, end = (start - start.min()) / np.timedelta64(1, "s"), (end - start.min()) / np.timedelta64(1, "s")
    workers = np.unique(pid)
    opens = max(start[pid == worker].min() for worker in workers)
    closes = min(end[pid == worker].max() for worker in workers)
    overlapped = bool(closes > opens)
    if not overlapped:
        opens, closes = 0.0, max(float(end.max()), 1e-6)
    duration = end - start
    inside = np.clip(np.minimum(end, closes) - np.maximum(start, opens), 0, None)
    counted = np.where(duration > 0, inside / np.where(duration > 0, duration, 1), (start >= opens) & (end <= closes))
    return float(np.sum(counted) / (closes - opens)), overlapped


def main() -> None:
    """Time each fleet; print a table and the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("postgresql", "mysql"), default="postgresql")
    parser.add_argument("--cpu-jobs", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=600_000,
                        help="sha256 rounds per CPU-bound job (default: about 0.25 s, one job per claim)")
    parser.add_argument("--trivial-jobs", type=int, default=20_000,
                        help="enough that 16 workers' batches reach a steady state")
    parser.add_argument("--many", type=int, default=16, help="workers in the many-worker fleet")
    args = parser.parse_args()
    settings = settings_for(args.backend)
    busy = {count: throughput(settings, "Busy", args.cpu_jobs, count, TOY_ROUNDS=args.rounds) for count in (1, 2)}
    trivial = {count: throughput(settings, "Gated", args.trivial_jobs, count) for count in (1, args.many)}
    speedup = busy[2]["jobs_per_s"] / busy[1]["jobs_per_s"]
    many = trivial[args.many]["jobs_per_s"] / trivial[1]["jobs_per_s"]
    print(f"\n{args.backend}:")
    print(f"  CPU-bound, {args.cpu_jobs} jobs: 1 worker {busy[1]['jobs_per_s']:.2f} jobs/s, "
          f"2 workers {busy[2]['jobs_per_s']:.2f} jobs/s: x{speedup:.2f}")
    print(f"  trivial, {args.trivial_jobs} jobs: 1 worker {trivial[1]['jobs_per_s']:.0f} jobs/s, "
          f"{args.many} workers {trivial[args.many]['jobs_per_s']:.0f} jobs/s: x{many:.2f}; "
          f"most make() calls for one key: {trivial[args.many]['most_calls_per_key']}")
    print(json.dumps({"backend": args.backend, "cpu_speedup_2_workers": round(speedup, 3),
                      "cpu_jobs_per_s": {count: round(value["jobs_per_s"], 3) for count, value in busy.items()},
                      "trivial_jobs_per_s": {count: round(value["jobs_per_s"], 1) for count, value in trivial.items()},
                      "many_over_one": round(many, 3), "many_workers": args.many,
                      "made_twice": trivial[args.many]["most_calls_per_key"] > 1,
                      "all_fleets_overlapped": all(run["overlapped"] for run in [*busy.values(), *trivial.values()])}))


if __name__ == "__main__":
    main()
