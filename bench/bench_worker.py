"""Per-job overhead of a neuropipe worker against DataJoint's own populate, same run.

1,000 trivial jobs (a make() that inserts one small row) on each server, timed with:

- ``populate(reserve_jobs=True)``: stock DataJoint 2 distributed mode (the peer);
- ``populate()``: stock direct mode, no job table (a floor: no coordination at all);
- a neuropipe :class:`~neuropipe.worker.Worker` claiming 1 job per round trip, and 16, with
  provenance recorded (the default) and without (``provenance=False``): the difference is
  what the provenance sidecar costs per job.

The last line is one JSON object (per backend: ms per job of each way, and the provenance
overhead in ms and as a ratio).

    python bench/bench_worker.py [--jobs 1000] [--backends postgresql mysql embedded]
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))

import toy_pipeline  # noqa: E402

from neuropipe import registry  # noqa: E402
from neuropipe.config import Settings  # noqa: E402
from neuropipe.database import connect, import_datajoint  # noqa: E402
from neuropipe.worker import Worker, WorkerOptions  # noqa: E402

SERVERS = {"postgresql": ("127.0.0.1", 5432, "root"), "mysql": ("127.0.0.1", 3306, "root")}


def settings_for(backend: str) -> Settings:
    """Return settings of a local server, or of the embedded PostgreSQL."""
    store = Path(tempfile.mkdtemp(prefix="bench-store-"))
    if backend == "embedded":
        from neuropipe.embedded import EmbeddedPostgres

        info = EmbeddedPostgres().ensure_running()
        return Settings(host=info.host, port=info.port, user=info.user, backend="postgresql", store=store)
    host, port, user = SERVERS[backend]
    return Settings(host=host, port=port, user=user, backend=backend, store=store)


def timed(settings: Settings, jobs: int, run) -> float:
    """Declare fresh toy tables, insert ``jobs`` items, and time ``run(tables)``; return ms per job."""
    dj = import_datajoint()
    prefix = f"bench_{secrets.token_hex(3)}_"
    connection = connect(settings)
    registry.activate(prefix, connection)
    schema = dj.Schema(prefix + "toy", connection=connection)
    tables = toy_pipeline.declare(schema)
    tables.Item.insert([{"item": i} for i in range(jobs) if i != toy_pipeline.UNLUCKY])
    try:
        start = time.perf_counter()
        run(tables)
        elapsed = time.perf_counter() - start
        assert len(tables.Square()) == jobs - 1, "not every job was done"
    finally:
        schema.drop(prompt=False)
        registry.drop()
    return 1000 * elapsed / (jobs - 1)


def main() -> None:
    """Print ms per job of each way, per backend, and the ratio to stock reserve_jobs."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--backends", nargs="+", default=["postgresql", "mysql"])
    args = parser.parse_args()
    ways = {
        "stock populate(reserve_jobs=True)": lambda t: t.Square.populate(reserve_jobs=True),
        "stock populate() (no job table)": lambda t: t.Square.populate(),
        "neuropipe worker, batch 1": lambda t: Worker([t.Square], WorkerOptions(max_idle=0, batch=1)).serve(),
        "neuropipe worker, batch 16": lambda t: Worker([t.Square], WorkerOptions(max_idle=0, batch=16)).serve(),
        "neuropipe worker, batch 1, no provenance":
            lambda t: Worker([t.Square], WorkerOptions(max_idle=0, batch=1, provenance=False)).serve(),
        "neuropipe worker, batch 16, no provenance":
            lambda t: Worker([t.Square], WorkerOptions(max_idle=0, batch=16, provenance=False)).serve(),
    }
    summary = {}
    for backend in args.backends:
        settings = settings_for(backend)
        results = {name: timed(settings, args.jobs, run) for name, run in ways.items()}
        peer = results["stock populate(reserve_jobs=True)"]
        print(f"\n{backend}: {args.jobs} trivial jobs")
        for name, ms in results.items():
            print(f"  {name:<42} {ms:7.2f} ms/job   ratio to stock reserve_jobs {ms / peer:5.2f}")
        with_record, without = results["neuropipe worker, batch 1"], results["neuropipe worker, batch 1, no provenance"]
        summary[backend] = {**{name: round(ms, 3) for name, ms in results.items()},
                            "provenance_ms_per_job": round(with_record - without, 3),
                            "provenance_ratio": round(with_record / without, 3)}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
