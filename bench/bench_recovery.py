"""How long a dead or hung worker's job stays reserved before another worker takes it.

Two ``neuropipe worker`` processes serve slow toy jobs; one is then either killed with
SIGKILL (its process is provably gone from this host) or frozen with SIGSTOP (it looks
like a hung worker on another machine: only its silent heartbeat tells).  Printed: seconds
from the signal until its job is back in the queue, against the 2 x heartbeat bound.

    python bench/bench_recovery.py [--heartbeat 10]
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SUPPORT = Path(__file__).resolve().parents[1] / "tests" / "support"
sys.path.insert(0, str(SUPPORT))

import toy_pipeline  # noqa: E402

from neuropipe.config import Settings  # noqa: E402
from neuropipe.database import connect, import_datajoint  # noqa: E402
from neuropipe.worker import registry  # noqa: E402


def start_worker(prefix: str, heartbeat: float, log) -> subprocess.Popen:
    """Start a worker on the toy pipeline against the local PostgreSQL server."""
    env = {**os.environ, "DJ_HOST": "127.0.0.1", "DJ_PORT": "5432", "DJ_USER": "root", "DJ_BACKEND": "postgresql",
           "NEUROPIPE_SCHEMA_PREFIX": prefix, "TOY_SCHEMA": prefix + "toy", "TOY_DELAY": str(3 * heartbeat),
           "PYTHONPATH": str(SUPPORT), "NEUROPIPE_STORE": tempfile.mkdtemp()}
    return subprocess.Popen([sys.executable, "-m", "neuropipe.cli", "worker", "--pipeline", "toy_pipeline",
                             "--tables", "Square", "--heartbeat", str(heartbeat), "--poll", "0.2"],
                            env=env, stdout=log, stderr=subprocess.STDOUT)


def measure(kind: int, heartbeat: float) -> float:
    """Return seconds from ``kind`` (a signal) to the victim's job being re-queued."""
    dj = import_datajoint()
    prefix = f"recov_{secrets.token_hex(3)}_"
    settings = Settings(host="127.0.0.1", port=5432, user="root", backend="postgresql", store=tempfile.mkdtemp())
    connection = connect(settings)
    registry.activate(prefix, connection)
    schema = dj.Schema(prefix + "toy", connection=connection)
    tables = toy_pipeline.declare(schema)
    tables.Item.insert([{"item": i} for i in range(4)])
    jobs = tables.Square().jobs
    with open(os.devnull, "wb") as log:
        victim, rescuer = start_worker(prefix, heartbeat, log), None
        try:
            while not jobs.reserved & {"pid": victim.pid}:
                time.sleep(0.05)
            rescuer = start_worker(prefix, heartbeat, log)
            time.sleep(2)  # the rescuer is up and busy with a job of its own
            held = jobs & {"pid": victim.pid} & "status='reserved'"
            victim.send_signal(kind)
            start = time.monotonic()
            while held:
                time.sleep(0.05)
            return time.monotonic() - start
        finally:
            for process in (victim, rescuer):
                if process:
                    process.send_signal(signal.SIGCONT)
                    process.kill()
                    process.wait()
            schema.drop(prompt=False)
            registry.drop()


def main() -> None:
    """Print recovery times after SIGKILL and SIGSTOP."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--heartbeat", type=float, default=10.0)
    args = parser.parse_args()
    for name, kind in (("kill -9 (process gone)", signal.SIGKILL), ("SIGSTOP (silent heartbeat)", signal.SIGSTOP)):
        seconds = measure(kind, args.heartbeat)
        print(f"{name:<28} job back in the queue after {seconds:5.1f} s "
              f"({seconds / args.heartbeat:.2f} x heartbeat {args.heartbeat:g} s; bound 2 x heartbeat)")


if __name__ == "__main__":
    main()
