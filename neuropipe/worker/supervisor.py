"""Several worker processes on one machine: ``neuropipe worker --processes N --gpus SPEC``.

Each worker is a separate ``neuropipe worker`` process, launched as a command line (not
forked: CUDA needs fresh processes, and a fork would share the database connection), with
``CUDA_VISIBLE_DEVICES`` pinned to its GPU.  The supervisor forwards stop signals, restarts
a worker that died (its jobs are recovered by the others), and exits once every worker has
exited on its own (``--max-idle`` / ``--max-jobs``).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

logger = logging.getLogger(__name__)

RESTART_LIMIT = 5  # restarts of one slot within RESTART_WINDOW seconds before giving up
RESTART_WINDOW = 60.0


@dataclass
class Slot:
    """One worker process the supervisor keeps running."""

    name: str
    argv: list
    env: dict
    process: subprocess.Popen | None = None
    restarts: list | None = None
    finished: bool = False


def cpu_share(processes: int) -> int:
    """Return the threads each of ``processes`` CPU workers gets: an equal share of this machine's CPUs.

    Each torch or OpenMP process otherwise starts a thread per CPU, and two of them on two cores
    spin against each other: measured here, slower than one worker alone.
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cpus // max(1, processes))


def plan_slots(worker_argv: list, processes: int, gpus: list[int]) -> list[Slot]:
    """Return one slot per CPU process and one per GPU.

    Parameters
    ----------
    worker_argv : list of str
        The ``neuropipe worker`` options every worker gets (without --processes/--gpus).
    processes : int
        CPU-only workers (``CUDA_VISIBLE_DEVICES`` empty), each with ``OMP_NUM_THREADS`` an equal
        share of the CPUs (:func:`cpu_share`) unless the environment sets it.
    gpus : list of int
        One worker per device index, pinned to it.
    """
    command = [sys.executable, "-m", "neuropipe.cli", "worker", *worker_argv]
    share = {} if "OMP_NUM_THREADS" in os.environ else {"OMP_NUM_THREADS": str(cpu_share(processes))}
    slots = [Slot(f"cpu{index}", [*command, "--gpus", "none"], {"CUDA_VISIBLE_DEVICES": "", **share})
             for index in range(processes)]
    slots += [Slot(f"gpu{device}", [*command, "--gpus", "pinned"], {"CUDA_VISIBLE_DEVICES": str(device)})
              for device in gpus]
    return slots


def supervise(slots: list[Slot], *, poll: float = 0.5) -> int:
    """Run the slots' workers until all have finished; return 0, or 1 if one gave up."""
    stop_signals = []

    def on_signal(number, frame):
        stop_signals.append(number)
        for slot in slots:
            if slot.process and slot.process.poll() is None:
                slot.process.send_signal(number)

    previous = {number: signal.signal(number, on_signal) for number in (signal.SIGTERM, signal.SIGINT)}
    try:
        for slot in slots:
            _start(slot)
        failed = False
        while not all(slot.finished for slot in slots):
            time.sleep(poll)
            for slot in slots:
                failed = _tend(slot, stopping=bool(stop_signals)) or failed
        return 1 if failed else 0
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _tend(slot: Slot, *, stopping: bool) -> bool:
    """Restart the slot's worker if it died; return True when giving up on it."""
    if slot.finished or slot.process.poll() is None:
        return False
    code = slot.process.returncode
    if code == 0 or stopping:
        slot.finished = True
    elif _may_restart(slot):
        logger.warning("worker %s exited with %s; restarting it", slot.name, code)
        _start(slot)
    else:
        logger.error("worker %s keeps failing (exit %s); giving up on it", slot.name, code)
        slot.finished = True
        return True
    return False


def _start(slot: Slot) -> None:
    slot.process = subprocess.Popen(slot.argv, env={**os.environ, **slot.env})
    logger.info("started worker %s (pid %d)", slot.name, slot.process.pid)


def _may_restart(slot: Slot) -> bool:
    now = time.monotonic()
    slot.restarts = [moment for moment in (slot.restarts or []) if now - moment < RESTART_WINDOW] + [now]
    return len(slot.restarts) <= RESTART_LIMIT
