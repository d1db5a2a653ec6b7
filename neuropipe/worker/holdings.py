"""Who claims jobs, and which claimed jobs this process holds.

A reservation in a job table carries the host and pid of the process that made it
(:class:`Identity`).  What that process's workers hold is kept in :data:`HOLDINGS`, so one
process may run several workers, and a reservation with this process's identity that none of
them holds (a *stray*) can be told apart and handed back.
"""

from __future__ import annotations

import os
import platform
import threading
from dataclasses import dataclass

INITIAL_PID_NAMESPACE = 4026531836  # the inode of Linux's first pid namespace: the same on every machine


def host_name() -> str:
    """Return this process's host as workers record it: the machine's name, and its pid namespace if its own.

    A pid tells a process apart only among those of one pid namespace.  Containers on one
    machine that take its host name (``docker run --network host``, a pod with ``hostNetwork``)
    number their processes apart: without the namespace, a worker would judge another's job by
    a pid it cannot see.  So a process outside the machine's own pid namespace is
    ``<name>/pidns<inode>``.
    """
    name = platform.node()
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:  # not Linux, or no /proc: pids are the machine's
        return name
    return name if namespace == INITIAL_PID_NAMESPACE else f"{name}/pidns{namespace}"


@dataclass(frozen=True)
class Identity:
    """Who claims jobs: written into the job table's host (:func:`host_name`), pid and version columns."""

    worker_id: str
    host: str
    pid: int
    version: str


class Holdings:
    """The jobs this process holds: claimed by one of its workers and not yet settled.

    A reservation carrying this process's identity that is not held here is a *stray*: the
    process lost track of it (for example the reply to its claim never arrived), so nobody
    would ever finish or release it.  Claims hold :attr:`lock` from their ``UPDATE`` until
    the keys are recorded, and the hand-back of strays holds it from its last look at the
    holdings to its ``UPDATE``, so a fresh claim is never taken for a stray.
    """

    def __init__(self):
        self.lock = threading.Lock()
        self._keys: dict[str, set] = {}

    def add(self, table: str, keys) -> None:
        """Record ``keys`` of ``table`` as held."""
        self._keys.setdefault(table, set()).update(map(frozen_key, keys))

    def discard(self, table: str, keys) -> None:
        """Forget ``keys`` of ``table`` (finished, released, or lost track of)."""
        self._keys.get(table, set()).difference_update(map(frozen_key, keys))

    def holds(self, table: str, key: dict) -> bool:
        """Return whether a worker of this process holds ``key`` of ``table``."""
        return frozen_key(key) in self._keys.get(table, ())


HOLDINGS = Holdings()


def frozen_key(key: dict) -> tuple:
    """Return ``key`` as a hashable value that compares equal for equal keys."""
    return tuple(sorted((name, str(value)) for name, value in key.items()))
