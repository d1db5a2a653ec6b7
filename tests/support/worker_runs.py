"""Real ``neuropipe worker`` processes for the worker tests, and ways to wait on them."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import toy_pipeline

from neuropipe.database import connect, import_datajoint
from neuropipe.worker import registry

SUPPORT = Path(__file__).resolve().parent


@contextlib.contextmanager
def toy_schema(settings):
    """Declare the toy tables in a schema of their own, with the worker registry beside them; drop both after."""
    dj = import_datajoint()
    connection = connect(settings)
    registry.activate(settings.schema_prefix, connection)
    schema = dj.Schema(settings.schema_prefix + "toy", connection=connection)
    try:
        yield toy_pipeline.declare(schema)
    finally:
        connection.connect()  # a test may have restarted the server under this connection
        schema.drop(prompt=False)
        registry.drop()


def worker_process(settings, log_path, *options, tables=("Square",), heartbeat: float = 1.0, launcher=(),
                   **environment):
    """Start ``neuropipe worker`` on the toy pipeline in a process of its own.

    Parameters
    ----------
    settings : neuropipe.config.Settings
        The server, schema prefix and store the worker uses.
    log_path : path-like
        Its standard output and error go here.
    *options : str
        Further ``neuropipe worker`` options.
    tables : sequence of str
        The toy tables it serves.
    heartbeat : float
        Seconds between heartbeats.
    launcher : sequence of str
        A command that runs the worker's command line (its arguments follow), e.g. in
        namespaces of its own; the process returned is then the launcher's.
    **environment
        Further environment variables (``TOY_DELAY``, ``TOY_STATE``, ...).
    """
    command = [*launcher, sys.executable, "-m", "neuropipe.cli", "worker", "--pipeline", "toy_pipeline",
               *(f"--tables={table}" for table in tables), "--heartbeat", str(heartbeat), "--poll", "0.2", *options]
    return subprocess.Popen(command, env=toy_environment(settings, **environment), stdout=open(log_path, "ab"),
                            stderr=subprocess.STDOUT)


def toy_environment(settings, **environment) -> dict:
    """Return the environment of a ``neuropipe`` command on the toy pipeline: ``settings``' server and schemas."""
    return {**os.environ, "DJ_HOST": settings.host, "DJ_PORT": str(settings.port), "DJ_USER": settings.user,
            "DJ_PASS": "", "DJ_BACKEND": settings.backend, "NEUROPIPE_SCHEMA_PREFIX": settings.schema_prefix,
            "NEUROPIPE_STORE": str(settings.store), "TOY_SCHEMA": settings.schema_prefix + "toy",
            "PYTHONPATH": os.pathsep.join([str(SUPPORT), os.environ.get("PYTHONPATH", "")]),
            **{name: str(value) for name, value in environment.items()}}


def wait_until(predicate, timeout, what):
    """Poll ``predicate`` until true; return the monotonic time then; fail after ``timeout`` s naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return time.monotonic()
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def logs(folder, tail: int = 20000) -> str:
    """Return the ends of the worker logs (``worker*.log``) in ``folder``."""
    return "\n".join(f"--- {path.name}\n" + path.read_text(errors="replace")[-tail:]
                     for path in sorted(Path(folder).glob("worker*.log")))
