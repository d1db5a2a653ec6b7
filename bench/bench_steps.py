"""Per-job cost of a step declared from a function against a hand-written table of the same work.

1,000 trivial jobs (square an item, insert one row) in fresh toy schemas, by one neuropipe
worker with default settings (provenance on), alternating:

- ``hand-written``: the toy pipeline's ``Square`` (a Computed table with its own ``make``);
- ``step``: ``@steps.step(schema) def squared(item) -> int``, which adds what every step has: a
  parameter-set Lookup in its key, the settings fetched per job, the result checked against
  its annotation.

    python bench/bench_steps.py [--jobs 1000] [--rounds 2] [--backend postgresql|mysql]

Prints ms and SQL round trips per job for each, and their ratio; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "support"))
sys.path.insert(0, str(ROOT / "bench"))

from overhead import Counter, settings_for, toy_schema  # noqa: E402

from neuropipe import steps  # noqa: E402
from neuropipe.worker import Worker, WorkerOptions  # noqa: E402


def run(settings, jobs: int, way: str) -> dict:
    """Make ``jobs`` squares the ``way`` asked in fresh schemas; return ms and round trips per job."""
    with toy_schema(settings, jobs) as (schema, tables):
        table = tables.Square
        if way == "step":
            steps.provide("item", tables.Item, lambda key: key["item"])

            def squared(item) -> int:
                return item * item

            table = steps.step(schema, squared)
        with Counter().active() as counter:
            start = time.perf_counter()
            Worker([table], WorkerOptions(max_idle=0)).serve()
            elapsed = time.perf_counter() - start
        assert len(table()) == jobs, "jobs left undone"
    return {"ms_per_job": 1000 * elapsed / jobs, "round_trips_per_job": counter.statements / jobs}


def main() -> None:
    """Alternate the two ways for ``--rounds`` rounds; print each and the ratio of medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--backend", choices=("postgresql", "mysql"), default="postgresql")
    args = parser.parse_args()
    settings = settings_for(args.backend)
    found = {"hand-written": [], "step": []}
    for _ in range(args.rounds):
        for way in found:
            found[way].append(run(settings, args.jobs, way))
            print(f"{way:<14} {found[way][-1]['ms_per_job']:7.3f} ms/job  "
                  f"{found[way][-1]['round_trips_per_job']:6.3f} round trips/job")
    median = {way: statistics.median(run["ms_per_job"] for run in runs) for way, runs in found.items()}
    result = {"backend": args.backend, "jobs": args.jobs, "runs": found,
              "step_over_hand_written": round(median["step"] / median["hand-written"], 3)}
    print(f"step / hand-written (medians): {result['step_over_hand_written']}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
