"""A toy pipeline of plain DataJoint tables, served by workers in the worker tests.

Imported by name (``neuropipe worker --pipeline toy_pipeline``) it binds itself, as any
user's module would, to the schema named by ``TOY_SCHEMA``.  Tests that run workers in
their own process call :func:`declare` on a schema of their own instead.

Behaviour is steered through the environment, which reaches worker processes too:
``TOY_DELAY`` (seconds per job), ``TOY_ROUNDS`` (hash rounds of CPU work per :class:`Busy` job),
``TOY_STATE`` (a folder where :class:`Flaky` counts its
attempts, and where :class:`Gated` finds its gates), ``TOY_FLAKY_FAILURES`` (how many times
each Flaky job fails with a timeout).
"""

import hashlib
import os
import time
from pathlib import Path
from types import SimpleNamespace

import datajoint as dj

UNLUCKY = 13


def declare(schema):
    """Declare the toy tables in ``schema``; return them in a namespace."""

    @schema
    class Item(dj.Manual):
        definition = """
        item : int32
        """

    @schema
    class Square(dj.Computed):
        definition = """
        -> Item
        ---
        square : int64
        made_by_pid : int32
        """

        def make(self, key):
            delay = float(os.environ.get("TOY_DELAY", "0"))
            if delay:  # time.sleep(0) is a system call: 0.09 ms here, more than the rest of the job
                time.sleep(delay)
            if key["item"] == UNLUCKY:
                raise ValueError(f"item {UNLUCKY} is unlucky")
            self.insert1(dict(key, square=key["item"] ** 2, made_by_pid=os.getpid()))

    @schema
    class GpuSquare(dj.Computed):
        resources = {"gpu": True}
        definition = """
        -> Item
        ---
        square : int64
        """

        def make(self, key):
            self.insert1(dict(key, square=key["item"] ** 2))

    @schema
    class Flaky(dj.Computed):
        definition = """
        -> Item
        ---
        attempts : int32
        """

        def make(self, key):
            counter = Path(os.environ["TOY_STATE"]) / f"flaky-{key['item']}"
            attempts = len(counter.read_text()) + 1 if counter.exists() else 1
            counter.write_text("x" * attempts)
            if attempts <= int(os.environ.get("TOY_FLAKY_FAILURES", "0")):
                raise TimeoutError(f"attempt {attempts} timed out")
            self.insert1(dict(key, attempts=attempts))

    @schema
    class Gated(dj.Computed):
        """Waits at a gate inside ``make()`` where the test set one, so a disruption lands there."""

        definition = """
        -> Item
        ---
        made_by_pid : int32
        """

        def make(self, key):
            folder = Path(os.environ["TOY_STATE"])
            with open(folder / f"{key['item']}.attempts", "a") as attempts:
                attempts.write(f"{os.getpid()}\n")
            wait_at_gate(folder, key["item"], "before-insert")
            self.insert1(dict(key, made_by_pid=os.getpid()))
            wait_at_gate(folder, key["item"], "after-insert")

    @schema
    class Busy(dj.Computed):
        """CPU-bound: ``TOY_ROUNDS`` rounds of sha256 per job, the same work whatever else runs."""

        definition = """
        -> Item
        ---
        digest : varchar(64)
        """

        def make(self, key):
            digest = hashlib.sha256(str(key["item"]).encode()).digest()
            for _ in range(int(os.environ.get("TOY_ROUNDS", "100000"))):
                digest = hashlib.sha256(digest).digest()
            self.insert1(dict(key, digest=digest.hex()))

    return SimpleNamespace(Item=Item, Square=Square, GpuSquare=GpuSquare, Flaky=Flaky, Gated=Gated, Busy=Busy)


def wait_at_gate(folder: Path, item: int, place: str, timeout: float = 300) -> None:
    """If the test closed a gate at ``place`` for ``item``, announce the arrival and wait for it to open.

    The test writes ``<item>.gate`` (the place) and later ``<item>.open``; an arrival leaves
    ``<item>.<place>.arrived``.
    """
    gate = folder / f"{item}.gate"
    if not gate.exists() or gate.read_text() != place:
        return
    (folder / f"{item}.{place}.arrived").write_text(str(os.getpid()))
    deadline = time.monotonic() + timeout
    while not (folder / f"{item}.open").exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the gate of item {item} at {place} stayed closed for {timeout} s")
        time.sleep(0.02)


if os.environ.get("TOY_SCHEMA"):
    globals().update(vars(declare(dj.Schema(os.environ["TOY_SCHEMA"]))))
