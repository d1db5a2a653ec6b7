"""Workers ride out database restarts, killed connections and long outages in every phase of a job.

Each backend gets a server of the session's own (``private_server``; the shared servers are
never touched), which the tests restart under two running ``neuropipe worker`` processes.
The disruption lands deterministically in one phase of a job of the toy ``Gated`` table:

- ``claim``: the test holds a lock on the job table, so the workers' claims wait;
- ``make``: ``make()`` waits at a gate before its insert;
- ``after-make``: ``make()`` has inserted and waits at a gate before returning, so the
  completion has not run;
- ``commit``: the server holds commits (waiting for a replica that does not exist), so the
  job's ``COMMIT`` is in flight; the transaction is durable but the worker never hears so.

After every disruption: each key made exactly once, nothing left ``reserved``, no ``error``
rows and no failure records (a lost connection is not the job's fault), every worker still
running.  Set ``NEUROPIPE_RESTART_REPORT`` to a file to get one JSON line per test with the
times measured.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import secrets
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from private_servers import wait_for
from worker_runs import logs, toy_schema, wait_until, worker_process

from neuropipe.worker import registry

PHASES = ("claim", "make", "after-make", "commit")
RESTARTS_PER_PHASE = 5
KILLS_PER_PHASE = 2
HEARTBEAT = 1.0
RECONNECT_CAP = 2.0
WORKERS = 2
BACKGROUND_ITEMS = 2  # ungated jobs queued beside each gated one


@dataclass
class Round:
    """One disruption: the gated job and what the test saw of it."""

    item: int
    phase: str
    holder: dict | None = None  # its reservation just before the disruption
    sessions: list = field(default_factory=list)  # server sessions caught in the phase
    lock: object = None  # the test's connection that holds the job table's lock
    returned_s: float | None = None  # from the server's return to the reservation leaving the job
    done_s: float | None = None  # from the server's return to the job done


class Fleet:
    """Workers serving ``Gated`` on a private server, and the test's hands on both."""

    def __init__(self, server, settings, toy, state: Path):
        self.server, self.settings, self.toy, self.state = server, settings, toy, state
        self.jobs_table = toy.Gated().jobs.full_table_name
        self.items: list[int] = []
        self.rounds: list[Round] = []
        # One job per transaction: each claim shows in the job row, where the phases are staged.
        # (Batches, whose claims stay inside their transaction, are tested in test_loop.py.)
        self.workers = [worker_process(settings, state / f"worker{index}.log", "--reconnect-cap", str(RECONNECT_CAP),
                                       "--batch", "1", tables=("Gated",), heartbeat=HEARTBEAT, TOY_STATE=state)
                        for index in range(WORKERS)]
        wait_until(lambda: len(registry.Worker & "status='running'") == WORKERS or self._exited(), 60,
                   "the workers to register")
        assert not self._exited(), logs(state)

    # --- staging a phase ----------------------------------------------------------------

    def stage(self, phase: str) -> Round:
        """Queue a gated job (and some ungated ones) and hold it in ``phase``; return the round."""
        self._queue(range(self._next(), self._next() + BACKGROUND_ITEMS))
        item = self._next()
        if phase == "claim":
            return self._stage_claim(item)
        place = "before-insert" if phase == "make" else "after-insert"
        (self.state / f"{item}.gate").write_text(place)
        self._queue([item])
        wait_for(lambda: (self.state / f"{item}.{place}.arrived").exists(), 60, f"item {item} to reach {place}")
        held = Round(item, phase, holder=self.job(item))
        if phase == "commit":
            self.server.block_commits()
            self.open_gate(item)
            held.sessions = wait_for(lambda: [s for s in self.server.waiting_commits()
                                              if s == held.holder["connection_id"]], 60, f"item {item}'s COMMIT")
        return held

    def _stage_claim(self, item: int) -> Round:
        """Queue ``item`` claimable in a second, lock the job table, and wait for a claim to block on it."""
        connection = self.toy.Item.connection
        background = self.items[-BACKGROUND_ITEMS:]  # queued first: the table lock would hold up their queueing
        wait_until(lambda: all((self.job(item) or {}).get("status") == "success" for item in background), 60,
                   "the background jobs to be done")
        claimable = registry.server_now(connection) + datetime.timedelta(seconds=1)
        with connection.transaction:
            self.toy.Item.insert1({"item": item})
            self.toy.Gated().jobs.insert1(dict(item=item, status="pending", scheduled_time=claimable,
                                               priority=connection._config.jobs.default_priority))
        self.items.append(item)
        lock = self.server.lock_table(self.jobs_table)
        try:
            sessions = wait_for(self.server.waiting_claims, 60, f"a claim of item {item} to wait for the table lock")
        except TimeoutError:
            lock.rollback()  # else the schema's DROP at teardown waits for this transaction forever
            raise AssertionError(f"no claim waited for the table lock:\n{logs(self.state)}") from None
        return Round(item, "claim", sessions=sessions, lock=lock)

    # --- disruptions --------------------------------------------------------------------

    def play(self, phase: str, times: int, disrupt) -> None:
        """Stage ``phase``, disrupt it and let it finish, ``times`` over.

        ``disrupt(held)`` returns the moment the server was back.
        """
        for _ in range(times):
            held = self.stage(phase)
            self.finish(held, disrupt(held))

    def restart(self, held: Round) -> float:
        """Restart the server under the workers (whatever ``held`` is); return the time it was back."""
        self.server.restart()
        back = time.monotonic()
        self.reconnect_test()
        return back

    def kill(self, held: Round) -> float:
        """Kill the sessions caught in the phase (the holder's connection inside make); return the time."""
        for session in held.sessions or [held.holder["connection_id"]]:
            self.server.kill(session)
        if held.phase == "commit":
            self.server.unblock_commits()
        return time.monotonic()

    def finish(self, held: Round, back: float) -> None:
        """Let the round's job go on; wait until it is done and record how long things took."""
        self.open_gate(held.item)
        if held.lock is not None:
            try:
                held.lock.rollback()
                held.lock.close()
            except Exception:  # a restart ended it already
                pass
        if held.holder:
            moved_on = wait_until(lambda: self._moved_on(held), 60, f"item {held.item}'s reservation to go")
            held.returned_s = round(moved_on - back, 2)
        done = wait_until(lambda: (self.job(held.item) or {}).get("status") == "success", 60,
                          f"item {held.item} to be done\n{logs(self.state)}")
        held.done_s = round(done - back, 2)
        self.rounds.append(held)

    # --- looking ------------------------------------------------------------------------

    def job(self, item: int) -> dict | None:
        """Return the job row of ``item`` (status, host, pid, connection_id, reserved_time)."""
        rows = self.server.query(f"SELECT status, host, pid, connection_id, reserved_time FROM {self.jobs_table} "
                                 "WHERE item = %s", (item,))
        return dict(zip(("status", "host", "pid", "connection_id", "reserved_time"), rows[0])) if rows else None

    def attempts(self, item: int) -> list[int]:
        """Return the pids of the workers that entered ``make()`` for ``item``, in order."""
        path = self.state / f"{item}.attempts"
        return [int(pid) for pid in path.read_text().split()] if path.exists() else []

    def open_gate(self, item: int) -> None:
        """Let ``make()`` of ``item`` go on."""
        (self.state / f"{item}.open").touch()

    def verify(self) -> None:
        """Assert the guarantees over every key so far (workers still running)."""
        count = f"SELECT COUNT(*) FROM {self.jobs_table} WHERE status = 'success'"
        wait_until(lambda: self.server.query(count)[0][0] >= len(self.items), 60, f"all jobs done\n{logs(self.state)}")
        made = dict(zip(*self.toy.Gated.to_arrays("item", "made_by_pid")))
        assert sorted(made) == sorted(self.items), logs(self.state)
        statuses = self.server.query(f"SELECT status, COUNT(*) FROM {self.jobs_table} GROUP BY status")
        assert dict(statuses) == {"success": len(self.items)}, logs(self.state)
        assert not registry.Failure(), registry.Failure.to_dicts()
        pids = {worker.pid for worker in self.workers}
        assert set(made.values()) <= pids
        assert not self._exited(), logs(self.state)
        for held in self.rounds:
            attempts = self.attempts(held.item)
            if held.phase == "commit":  # the commit stood: nobody made it again
                assert attempts == [held.holder["pid"]] and made[held.item] == held.holder["pid"], (held, attempts)
            elif held.phase in ("make", "after-make"):  # the interrupted attempt left nothing behind
                assert len(attempts) >= 2 and attempts[0] == held.holder["pid"], (held, attempts)

    def stop(self) -> list[int]:
        """Stop the workers with SIGTERM; return their exit codes ('hung' for one killed after 60 s)."""
        for worker in self.workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        codes = []
        for worker in self.workers:
            try:
                codes.append(worker.wait(timeout=60))
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
                codes.append("hung")
        return codes

    def report(self, disruption: str) -> dict:
        """Summarise the rounds; append it to ``NEUROPIPE_RESTART_REPORT`` where set."""
        returned = [held.returned_s for held in self.rounds if held.returned_s is not None]
        summary = dict(backend=self.server.backend, disruption=disruption, rounds=len(self.rounds),
                       phases=sorted({held.phase for held in self.rounds}), heartbeat_s=HEARTBEAT,
                       max_returned_s=max(returned, default=None), max_done_s=max(h.done_s for h in self.rounds),
                       keys=len(self.items))
        if os.environ.get("NEUROPIPE_RESTART_REPORT"):
            with open(os.environ["NEUROPIPE_RESTART_REPORT"], "a") as out:
                out.write(json.dumps(summary) + "\n")
        return summary

    # --- internals ----------------------------------------------------------------------

    def _next(self) -> int:
        return max(self.items, default=999) + 1

    def _queue(self, items) -> None:
        items = list(items)
        self.toy.Item.insert([{"item": item} for item in items])
        self.items.extend(items)

    def _exited(self) -> bool:
        return any(worker.poll() is not None for worker in self.workers)

    def _moved_on(self, held: Round) -> bool:
        job, holder = self.job(held.item), held.holder
        return job is None or job["status"] != "reserved" or job["reserved_time"] != holder["reserved_time"]

    def reconnect_test(self) -> None:
        """Reopen the test's own DataJoint connection, which the restart broke too."""
        connection = self.toy.Item.connection
        wait_for(lambda: self.server.reachable(), 30, "the server")
        connection.connect()


@pytest.fixture
def fleet(private_server, tmp_path_factory):
    """Two workers serving ``Gated`` on the private server, in schemas of the test's own."""
    store, state = tmp_path_factory.mktemp("store"), tmp_path_factory.mktemp("gates")
    settings = private_server.settings(store, f"nprestart_{secrets.token_hex(3)}_")
    with toy_schema(settings) as toy:
        fleet = Fleet(private_server, settings, toy, state)
        try:
            yield fleet
        finally:
            private_server.start()  # where a failed test left it down
            codes = fleet.stop()
        assert codes == [0] * WORKERS, logs(state)


@pytest.mark.parametrize("phase", PHASES)
def test_a_restart_in_each_phase_loses_and_duplicates_nothing(fleet, phase):
    fleet.play(phase, RESTARTS_PER_PHASE, fleet.restart)
    fleet.verify()
    summary = fleet.report("restart")
    assert "reconnected to the database" in logs(fleet.state)
    if phase == "commit":
        assert "found committed" in logs(fleet.state) or "was committed before" in logs(fleet.state)
    assert summary["max_done_s"] < 30


@pytest.mark.parametrize("phase", PHASES)
def test_a_killed_connection_in_each_phase_loses_and_duplicates_nothing(fleet, phase):
    fleet.play(phase, KILLS_PER_PHASE, fleet.kill)
    fleet.verify()
    fleet.report("killed connection")
    text = logs(fleet.state)
    assert "reconnected to the database" in text
    assert "stopped heartbeating" not in text and "re-queued: its worker" not in text  # no live worker was judged dead


def test_a_long_outage_is_waited_out_with_capped_backoff(fleet, private_server):
    held = fleet.stage("make")
    private_server.stop()
    fleet.open_gate(held.item)  # the holder finds the server gone
    time.sleep(4 * RECONNECT_CAP + 1)
    private_server.start()
    back = time.monotonic()
    fleet.reconnect_test()
    fleet.finish(held, back)
    fleet.verify()
    fleet.report("long outage")
    for path in sorted(fleet.state.glob("worker*.log")):
        wait_until(lambda: "reconnected to the database after" in path.read_text(errors="replace"),
                   2 * RECONNECT_CAP + 5, f"{path.name} to reconnect")
        text = path.read_text(errors="replace")
        attempts = [(int(number), float(wait)) for number, wait in
                    re.findall(r"database unreachable .*; attempt (\d+), retrying in ([\d.]+) s", text)]
        numbers = [number for number, _ in attempts]
        assert len(numbers) >= 4 and numbers == list(range(1, len(numbers) + 1)), (path.name, attempts)
        assert all(wait <= RECONNECT_CAP for _, wait in attempts) and attempts[-1][1] == pytest.approx(RECONNECT_CAP,
                                                                                                      rel=0.25)
        assert re.search(r"reconnected to the database after \d+\.\d s", text), text[-3000:]
        assert len(re.findall("heartbeat failed", text)) == 1, text[-3000:]


def test_a_worker_started_while_its_database_is_down_waits_for_it(private_server, tmp_path_factory):
    store, state = tmp_path_factory.mktemp("store"), tmp_path_factory.mktemp("gates")
    settings = private_server.settings(store, f"nprestart_{secrets.token_hex(3)}_")
    with toy_schema(settings) as toy:
        toy.Item.insert1({"item": 1})
        private_server.stop()
        try:
            worker = worker_process(settings, state / "worker.log", "--reconnect-cap", str(RECONNECT_CAP),
                                    "--max-jobs", "1", tables=("Gated",), TOY_STATE=state)
            time.sleep(3)
            assert worker.poll() is None, logs(state)
        finally:
            private_server.start()
        assert worker.wait(timeout=60) == 0, logs(state)
        toy.Item.connection.connect()
        assert len(toy.Gated()) == 1
    assert "database unreachable at start" in logs(state)
