"""Workers on several hosts share one database (issue #34).

Each "host" is a set of Linux namespaces of its own (``unshare --uts --pid --fork --mount-proc``):
a host name of its own and a pid numbering of its own, in which it sees only its own
processes.  The network is shared, so its worker reaches the same database servers on
127.0.0.1.  A worker on one host cannot tell by pid whether a worker on another is alive (that
pid may not exist on its host, or be a live process of its own host): only the registry's
heartbeats can tell.  The tests choose each worker's pid on its host (through
``/proc/sys/kernel/ns_last_pid``), so equal pids on different hosts are arranged, not hoped for.
A worker outside the machine's own pid namespace records its host as ``<name>/pidns<inode>``
(:func:`neuropipe.worker.holdings.host_name`), so two such "hosts" that share one host name, as
containers started with ``--network host`` do, are still told apart.

Needs root and ``unshare``; skipped otherwise.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from worker_runs import logs, toy_environment, toy_schema, wait_until, worker_process

from neuropipe.worker import registry

SERVERS = pytest.mark.parametrize("settings", ["postgresql", "mysql"], indirect=True)
HEARTBEAT = 1.0
SLACK = 3.0  # seconds beyond two heartbeats for a loaded machine, as in test_loop.py
NAMESPACES = ("--uts", "--pid", "--fork", "--mount-proc")
# Run as ``sh -c SETUP sh HOST PID COMMAND...``: COMMAND gets host name HOST and pid PID there.
SETUP = ('hostname "$1" && echo $(($2 - 1)) > /proc/sys/kernel/ns_last_pid || exit 97\n'
         'shift 2\n"$@" & wait $!')


def on_host(name: str, pid: int) -> list[str]:
    """Return the launcher that runs a command on host ``name`` (namespaces of its own) as pid ``pid`` there."""
    return ["unshare", *NAMESPACES, "sh", "-c", SETUP, "sh", name, str(pid)]


def _why_no_hosts() -> str | None:
    """Return why this machine cannot make hosts of namespaces, or None where it can (probed once)."""
    if os.geteuid() != 0:
        return "making hosts of Linux namespaces (unshare) needs root"
    if not shutil.which("unshare"):
        return "no unshare command"
    try:
        probe = subprocess.run([*on_host("nphost-probe", 42), "sh", "-c", "echo $$ $(hostname)"],
                               capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"unshare {' '.join(NAMESPACES)} failed: {error}"
    if probe.stdout.split() != ["42", "nphost-probe"]:
        return f"unshare {' '.join(NAMESPACES)} cannot make a host here: {(probe.stderr or probe.stdout).strip()}"
    return None


WHY_NO_HOSTS = _why_no_hosts()
pytestmark = pytest.mark.skipif(WHY_NO_HOSTS is not None, reason=WHY_NO_HOSTS or "")


def _children(pid: int) -> list[int]:
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


class HostWorker:
    """A ``neuropipe worker`` serving toy tables on a host of its own, as pid ``pid`` there.

    Attributes
    ----------
    outer_pid : int
        Its pid as this test sees it (``launcher`` is the ``unshare`` process above it).
    """

    def __init__(self, settings, folder: Path, host: str, pid: int, *options, tables=("Gated",), **environment):
        self.host, self.pid, self.folder = host, pid, folder
        self.launcher = worker_process(settings, folder / f"worker-{host}-{pid}.log", *options, tables=tables,
                                       heartbeat=HEARTBEAT, launcher=on_host(host, pid), TOY_STATE=folder,
                                       **environment)
        self.outer_pid = 0
        wait_until(self._found, 30, f"the worker on {host} to start\n{logs(folder)}")
        self.name = f"{host}/pidns{os.stat(f'/proc/{self.outer_pid}/ns/pid').st_ino}"  # as it records its host

    def _found(self) -> bool:
        assert self.launcher.poll() is None, logs(self.folder)
        shell = _children(self.launcher.pid)  # the host's pid 1: sh
        workers = [pid for pid in (_children(shell[0]) if shell else []) if self._is_worker(pid)]
        self.outer_pid = workers[0] if workers else 0
        return bool(workers)

    def _is_worker(self, pid: int) -> bool:
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False
        return b"neuropipe.cli" in command and self.namespace_pids(pid)[-1] == self.pid

    @staticmethod
    def namespace_pids(pid: int) -> list[int]:
        """Return a process's pids from this test's namespace to its own (``NSpid``)."""
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return [0]
        return [int(number) for number in re.search(r"^NSpid:\s*(.*)$", status, re.M).group(1).split()]

    def sees(self, pid: int) -> bool:
        """Return whether a process ``pid`` exists on this host (as its own ``/proc`` shows)."""
        return Path(f"/proc/{self.outer_pid}/root/proc/{pid}").exists()

    def registered(self) -> dict | None:
        """Return this worker's registry row once it runs."""
        rows = (registry.Worker & {"host": self.name, "pid": self.pid}).to_dicts()
        return rows[0] if rows and rows[0]["status"] == "running" else None

    def kill(self) -> None:
        """SIGKILL the worker; its host goes down with it."""
        os.kill(self.outer_pid, signal.SIGKILL)
        self.launcher.wait(timeout=30)

    def stop(self) -> int | str:
        """SIGTERM the worker and return its exit status ('hung' for one killed after 60 s)."""
        if self.launcher.poll() is None:
            try:
                os.kill(self.outer_pid, signal.SIGTERM)
            except ProcessLookupError:  # it has exited already; its launcher reports how
                pass
        try:
            return self.launcher.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.kill(self.outer_pid, signal.SIGKILL)
            self.launcher.wait()
            return "hung"


@pytest.fixture
def toy(settings):
    """The toy tables in a schema of the test's own, with the worker registry beside them."""
    with toy_schema(settings) as tables:
        yield tables


@pytest.fixture
def hosts(tmp_path):
    """Start workers on hosts of their own (``hosts(settings, name, pid, ...)``); stop them after the test."""
    started = []

    def start(settings, host: str, pid: int, *options, **keywords) -> HostWorker:
        started.append(HostWorker(settings, tmp_path, host, pid, *options, **keywords))
        return started[-1]

    yield start
    for gate in tmp_path.glob("*.gate"):  # a failed test may have left a worker waiting at one
        gate.with_suffix(".open").touch()
    for worker in started:
        worker.stop()


def hold(toy, settings, hosts, folder: Path, host: str, pid: int, item: int) -> HostWorker:
    """Start a worker on ``host`` as ``pid`` and have it hold the job of ``item`` (inside ``make()``, at a gate)."""
    (folder / f"{item}.gate").write_text("before-insert")
    toy.Item.insert1({"item": item})
    worker = hosts(settings, host, pid, "--batch", "1")
    wait_until(lambda: (folder / f"{item}.before-insert.arrived").exists(), 60,
               f"{host} to hold item {item}\n{logs(folder)}")
    assert job(toy, item)["host"] == worker.name and job(toy, item)["pid"] == pid
    wait_until(worker.registered, 30, f"{host} to register")
    return worker


def job(toy, item: int) -> dict:
    """Return the ``Gated`` job of ``item``: status, host, pid, reserved and scheduled time, message."""
    return (toy.Gated().jobs & {"item": item}).fetch1()


def attempts(folder: Path, item: int) -> list[int]:
    """Return the pids (on their hosts) that entered ``Gated.make()`` for ``item``, in order."""
    return [int(pid) for pid in (folder / f"{item}.attempts").read_text().split()]


def neuropipe_status(settings) -> str:
    """Run ``neuropipe status`` on the toy pipeline; return what it printed."""
    done = subprocess.run([sys.executable, "-m", "neuropipe.cli", "status", "--pipeline", "toy_pipeline"],
                          env=toy_environment(settings), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@SERVERS
def test_workers_on_three_hosts_make_each_key_exactly_once(toy, settings, hosts, tmp_path):
    """Every worker is pid 2 on its host: only the host tells their reservations apart."""
    items = list(range(100, 220))
    # one job per transaction: on MariaDB a worker claiming batches can keep the others from the queue's head
    workers = [hosts(settings, host, 2, "--max-idle", "4", "--batch", "1", tables=("Square", "Gated"),
                     TOY_DELAY=0.02) for host in ("hosta", "hostb", "hostc")]
    for worker in workers:
        wait_until(worker.registered, 30, f"{worker.host} to register\n{logs(tmp_path)}")
    toy.Item.insert([{"item": item} for item in items])
    assert [worker.launcher.wait(timeout=120) for worker in workers] == [0, 0, 0], logs(tmp_path)
    assert all(len(attempts(tmp_path, item)) == 1 for item in items)  # make() ran once per key, on all hosts together
    assert sorted(toy.Gated.to_arrays("item")) == items and sorted(toy.Square.to_arrays("item")) == items
    for table in (toy.Square, toy.Gated):
        finished = table().jobs.to_dicts()
        assert len(finished) == len(items) and {j["status"] for j in finished} == {"success"}
        assert not [j for j in finished if j["error_message"]]  # e.g. "made by another worker meanwhile"
        assert {j["pid"] for j in finished} == {2}
    makers = set(toy.Square().jobs.to_arrays("host"))
    assert len(makers) >= 2, makers  # the hosts shared the work
    assert not registry.Failure() and "re-queued" not in logs(tmp_path)
    assert sorted(zip(*registry.Worker.to_arrays("host", "pid", "status"))) == [
        (worker.name, 2, "stopped") for worker in workers]


@SERVERS
def test_a_worker_killed_on_another_host_loses_its_job_after_two_silent_heartbeats_not_before(toy, settings, hosts,
                                                                                               tmp_path):
    """Host A cannot see B's processes: B's pid (300) does not exist on A, yet A waits for B's heartbeats to stop."""
    a = hold(toy, settings, hosts, tmp_path, "hosta", 2, item=1)
    b = hold(toy, settings, hosts, tmp_path, "hostb", 300, item=2)
    assert not a.sees(300) and b.sees(300) and registry.Worker.to_arrays("pid", order_by="host").tolist() == [2, 300]
    killed = time.monotonic()
    b.kill()
    returned = wait_until(lambda: job(toy, 2)["status"] != "reserved", 2 * HEARTBEAT + SLACK + 5,
                          f"hostb's job to return\n{logs(tmp_path)}")
    rescued, last_beat = job(toy, 2), (registry.Worker & {"host": b.name}).fetch1("heartbeat_time")
    silent = (rescued["scheduled_time"] - last_beat).total_seconds()  # its requeue's server time, after B's last beat
    print(f"\n{settings.backend}: heartbeat {HEARTBEAT} s; hostb's job back {returned - killed:.2f} s after SIGKILL, "
          f"{silent:.2f} s after its last heartbeat")
    assert rescued["status"] == "pending" and rescued["error_message"] == f"re-queued: its worker {b.name}:300 stopped"
    assert silent >= 2 * HEARTBEAT, "re-queued before its worker's heartbeats went silent"
    assert returned - killed <= 2 * HEARTBEAT + SLACK
    assert job(toy, 1)["status"] == "reserved" and job(toy, 1)["host"] == a.name
    for item in (1, 2):
        (tmp_path / f"{item}.open").touch()
    wait_until(lambda: len(toy.Gated()) == 2, 30, f"both jobs done\n{logs(tmp_path)}")
    assert attempts(tmp_path, 1) == [2] and attempts(tmp_path, 2) == [300, 2]
    assert job(toy, 2)["host"] == a.name and (registry.Worker & {"host": b.name}).fetch1("status") == "lost"
    assert a.stop() == 0, logs(tmp_path)


@SERVERS
def test_a_live_worker_keeps_its_job_when_a_dead_one_on_another_host_had_its_pid(toy, settings, hosts, tmp_path):
    """A and B are both pid 2 on their hosts; B dies, A's job stays A's; ``neuropipe status`` names their hosts."""
    a = hold(toy, settings, hosts, tmp_path, "hosta", 2, item=1)
    b = hold(toy, settings, hosts, tmp_path, "hostb", 2, item=2)
    assert a.namespace_pids(a.outer_pid)[-1] == b.namespace_pids(b.outer_pid)[-1] == 2 != a.outer_pid
    assert sorted(zip(*registry.Worker.to_arrays("host", "pid"))) == [(a.name, 2), (b.name, 2)]
    shown = neuropipe_status(settings)
    assert re.search(rf"^Gated .* {re.escape(a.name)}:2 {re.escape(b.name)}:2$", shown, re.M), shown
    for worker, item in ((a, 1), (b, 2)):
        line = rf"^  {re.escape(worker.name)}:2 running .* now: Gated {{'item': {item}}}$"
        assert re.search(line, shown, re.M), shown
    held = job(toy, 1)
    b.kill()

    def returned() -> bool:
        assert job(toy, 1) == held, "hosta's job was taken away"
        return job(toy, 2)["status"] != "reserved"

    wait_until(returned, 2 * HEARTBEAT + SLACK + 5, f"hostb's job to return\n{logs(tmp_path)}")
    time.sleep(HEARTBEAT)  # two more sweeps
    assert job(toy, 1) == held and a.registered()
    shown = neuropipe_status(settings)
    print(f"\n{settings.backend}: neuropipe status after hostb's worker was killed:\n{shown}")
    assert re.search(rf"^  {re.escape(a.name)}:2 running ", shown, re.M), shown
    assert re.search(rf"^  {re.escape(b.name)}:2 lost ", shown, re.M), shown
    for item in (1, 2):
        (tmp_path / f"{item}.open").touch()
    wait_until(lambda: len(toy.Gated()) == 2, 30, f"both jobs done\n{logs(tmp_path)}")
    assert attempts(tmp_path, 1) == [2]  # hosta's make() was never interrupted nor repeated
    assert job(toy, 1)["host"] == job(toy, 2)["host"] == a.name
    assert "re-queued: its worker hosta" not in logs(tmp_path) and a.stop() == 0, logs(tmp_path)


@SERVERS
def test_workers_sharing_a_host_name_in_pid_namespaces_of_their_own_keep_their_jobs(toy, settings, hosts, tmp_path):
    """As containers started with ``--network host`` do: one host name, two pid numberings.

    A's pid 2 and B's pid 300 each exist only in their own namespace; with the host name
    alone, each would find the other's pid gone and take its job.
    """
    a = hold(toy, settings, hosts, tmp_path, "shared", 2, item=1)
    b = hold(toy, settings, hosts, tmp_path, "shared", 300, item=2)
    assert not a.sees(300) and not b.sees(2) and a.name != b.name and a.name.startswith("shared/pidns")
    held = {item: job(toy, item) for item in (1, 2)}
    time.sleep(3 * HEARTBEAT + 1)  # sweeps of both
    assert {item: job(toy, item) for item in (1, 2)} == held and a.registered() and b.registered()
    for item in (1, 2):
        (tmp_path / f"{item}.open").touch()
    wait_until(lambda: len(toy.Gated()) == 2, 30, f"both jobs done\n{logs(tmp_path)}")
    assert attempts(tmp_path, 1) == [2] and attempts(tmp_path, 2) == [300]  # neither make() was repeated
    assert "re-queued" not in logs(tmp_path) and a.stop() == 0 and b.stop() == 0, logs(tmp_path)
