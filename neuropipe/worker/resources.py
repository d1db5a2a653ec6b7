"""What a table needs to run, and what a worker has.

A table declares its needs in a class attribute ``resources``, a dict with

- ``gpu`` (bool, default False): the table must run on a GPU; workers without a GPU never
  claim its jobs;
- ``memory_gb`` (float, default 0): memory one job needs; workers with less never claim it;
- ``cpus`` (int, default 0): cores one job needs (a CWL tool's ``coresMin``); workers on
  fewer never claim it.

For example::

    @schema
    class Segmentation(dj.Computed):
        resources = {"gpu": True, "memory_gb": 16}

A worker's resources are its GPUs (``--gpus``), its host's memory (or ``--memory-gb``) and
its CPU count.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Resources:
    """What a worker offers."""

    gpus: tuple = field(default_factory=tuple)
    memory_gb: float = 0.0
    cpus: int = 1

    def as_json(self) -> dict:
        """Return a JSON-ready dict (for the worker registry)."""
        return {**asdict(self), "gpus": list(self.gpus)}

    def can_run(self, table) -> bool:
        """Return True when this worker meets ``table.resources``."""
        needs = getattr(table, "resources", None) or {}
        if needs.get("gpu") and not self.gpus:
            return False
        return float(needs.get("memory_gb", 0)) <= self.memory_gb and int(needs.get("cpus", 0)) <= self.cpus


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Keep glibc to ``arenas`` malloc arenas in this process (where ``MALLOC_ARENA_MAX`` does not say otherwise).

    glibc gives threads heaps of their own (up to 8 per core) that keep freed block buffers;
    measured on a blockwise worker, two arenas cut its peak memory above its imports from
    200 MB to 128 MB (``bench/bench_blockwise.py``).  Returns whether the limit was set.
    """
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    try:
        import ctypes

        return bool(ctypes.CDLL("libc.so.6").mallopt(-8, int(arenas)))  # -8: M_ARENA_MAX
    except (OSError, AttributeError):  # not glibc
        return False


def return_free_memory() -> bool:
    """Hand the heap's free pages back to the operating system (glibc ``malloc_trim``).

    Called by workers after long jobs, so that what one job freed (and glibc kept) does not
    stay resident beside the next job's own memory, of another table and another shape (on
    a blockwise worker running all four blockwise tables: peak 2.33 -> 2.22 times the
    kernel's).  Costs well under a millisecond; returns whether anything was released.
    """
    try:
        import ctypes

        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):  # not glibc
        return False


def host_memory_gb() -> float:
    """Return the host's physical memory in GiB."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


def local_resources(gpus=(), memory_gb: float | None = None) -> Resources:
    """Describe this process: the GPUs it was given, the host's memory, its CPUs."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return Resources(gpus=tuple(gpus), memory_gb=round(memory_gb or host_memory_gb(), 1), cpus=cpus)


def visible_gpus() -> list[int]:
    """Return the indices of the CUDA devices this process can see."""
    try:
        import torch
    except ImportError:
        return []
    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []


def parse_gpus(spec: str | None) -> list[int]:
    """Parse ``--gpus``: ``all``, ``none`` or a comma-separated list of device indices.

    Raises
    ------
    ValueError
        For anything else, or ``all`` where no GPU is visible.
    """
    if spec in (None, "", "none"):
        return []
    if spec == "all":
        found = visible_gpus()
        if not found:
            raise ValueError("--gpus all: no CUDA device is visible to this process.")
        return found
    try:
        return [int(part) for part in spec.split(",")]
    except ValueError:
        raise ValueError(f"--gpus {spec!r}: expected 'all', 'none' or device indices such as 0,1.") from None
