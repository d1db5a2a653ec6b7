"""A throwaway one-node SLURM cluster for the worker-launcher tests.

The session fixture :func:`slurm_cluster` installs Debian's ``slurm-wlm`` and ``munge`` where
they are missing (as root, with ``apt-get``; the only reason to skip is that this is
impossible), writes a ``slurm.conf`` whose state, spool, log and pid files all lie in a
private directory under the system temporary directory, starts ``munged`` (unless one already
answers), ``slurmctld`` and ``slurmd`` on free ports, and stops what it started afterwards.
Daemons left over by an earlier session that was killed are recognised by the prefix of
their configuration directory and stopped first.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

logger = logging.getLogger(__name__)

PREFIX = "neuropipe-slurm-"
COMMANDS = ("sbatch", "squeue", "scontrol", "scancel", "sinfo", "slurmctld", "slurmd", "munged", "munge", "unmunge")
PACKAGES = ("slurm-wlm", "munge")
INSTALL_TIMEOUT = 600
FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
            "BOOT_FAIL", "DEADLINE"}
MUNGE_KEY = Path("/etc/munge/munge.key")
MUNGE_PID = Path("/run/munge/munged.pid")

SLURM_CONF = """\
ClusterName=neuropipe-test
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MpiDefault=none
ReturnToService=2
MinJobAge=600
{node}
PartitionName=test Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def _which(command: str) -> str | None:
    """Return the path of ``command``, looking in the sbin directories too."""
    return shutil.which(command, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))


def _install() -> None:
    """Install SLURM and munge with apt-get where missing; skip the tests where impossible."""
    missing = [command for command in COMMANDS if _which(command) is None]
    if not missing:
        return
    why = f"SLURM is not installed (missing {', '.join(missing)})"
    if os.geteuid() != 0 or _which("apt-get") is None:
        pytest.skip(f"{why} and cannot be installed here: apt-get as root is needed"
                    + (" (under CI too)" if os.environ.get("CI") else ""))
    script = ("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
              "--no-install-recommends " + " ".join(PACKAGES))
    start = time.monotonic()
    try:
        subprocess.run(["bash", "-c", script], check=True, capture_output=True, text=True, timeout=INSTALL_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.skip(f"{why}; apt-get did not finish within {INSTALL_TIMEOUT} s")
    except subprocess.CalledProcessError as error:
        pytest.skip(f"{why}; apt-get failed ({error.returncode}): {(error.stderr or error.stdout)[-2000:]}")
    still = [command for command in COMMANDS if _which(command) is None]
    if still:
        pytest.skip(f"{why}; after apt-get install {' '.join(PACKAGES)}, still missing {', '.join(still)}")
    logger.info("installed %s in %.0f s", " ".join(PACKAGES), time.monotonic() - start)


def _munge_works() -> bool:
    """Return True when a munged answers on the default socket."""
    try:
        credential = subprocess.run([_which("munge"), "-n"], capture_output=True, timeout=10)
        decoded = subprocess.run([_which("unmunge")], input=credential.stdout, capture_output=True, timeout=10)
    except subprocess.TimeoutExpired:
        return False
    return credential.returncode == 0 and decoded.returncode == 0


def _start_munge() -> int | None:
    """Make sure munged runs; return its pid if this function started it, else None."""
    if _munge_works():
        return None
    MUNGE_KEY.parent.mkdir(parents=True, exist_ok=True)
    if not MUNGE_KEY.exists():
        MUNGE_KEY.write_bytes(os.urandom(1024))
    for path in (MUNGE_KEY.parent, Path("/run/munge"), Path("/var/lib/munge"), Path("/var/log/munge")):
        path.mkdir(parents=True, exist_ok=True)
        shutil.chown(path, "munge", "munge")
    os.chmod(MUNGE_KEY, 0o400)
    shutil.chown(MUNGE_KEY, "munge", "munge")
    subprocess.run([_which("runuser"), "-u", "munge", "--", _which("munged")], check=True, timeout=30)
    _wait_for(_munge_works, 30, "munged to answer")
    return int(MUNGE_PID.read_text()) if MUNGE_PID.exists() else None


def _wait_for(condition, timeout: float, what: str, diagnose=lambda: "") -> None:
    """Poll ``condition()`` every half second; fail the fixture after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}\n{diagnose()}")
        time.sleep(0.5)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


def _alive(pid: int) -> bool:
    """Return True when process ``pid`` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _read_pid(path: Path, command: str) -> int | None:
    """Return the pid in ``path`` if that process is alive and runs ``command``, else None."""
    try:
        pid = int(path.read_text())
        alive = command in Path(f"/proc/{pid}/cmdline").read_text(errors="replace") and _alive(pid)
    except (OSError, ValueError):
        return None
    return pid if alive else None


def _kill_leftovers() -> None:
    """Stop the daemons of earlier sessions whose pytest process is gone; remove their directories.

    slurmctld and slurmd are recognised by their ``-f <tmp>/neuropipe-slurm-*/slurm.conf``
    argument, a munged such a session started by the ``munged`` file there; the ``owner``
    file names the session's pytest process (a live one keeps its cluster).
    """
    tmp = tempfile.gettempdir()
    pattern = re.compile(rf"slurm(?:ctld|d)\x00.*\x00({re.escape(tmp)}/{PREFIX}[^/\x00]+)/")
    daemons = {Path(conf).parent: [] for conf in glob.glob(f"{tmp}/{PREFIX}*/slurm.conf")}
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            if match := pattern.search((proc / "cmdline").read_bytes().decode(errors="replace")):
                daemons.setdefault(Path(match.group(1)), []).append(int(proc.name))
    for root, pids in daemons.items():
        if _read_pid(root / "owner", "python"):  # its session is still running
            continue
        pids.append(_read_pid(root / "munged", "munged"))
        for pid in filter(None, pids):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
                logger.warning("killed leftover daemon %s of %s", pid, root)
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class SlurmCluster:
    """A running one-node cluster: its directory, environment and daemons.

    Attributes
    ----------
    root : Path
        The private directory with ``slurm.conf``, state, spool and daemon logs.
    env : dict
        Environment for SLURM client commands (``SLURM_CONF`` points at ``root``).
    """

    root: Path
    env: dict
    daemons: list = field(default_factory=list)

    def run(self, *command: str, env: dict | None = None) -> str:
        """Run a SLURM client command; return its standard output (raise on failure)."""
        done = subprocess.run([_which(command[0]), *command[1:]], env={**self.env, **(env or {})},
                              capture_output=True, text=True, timeout=60)
        if done.returncode:
            raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr}")
        return done.stdout

    def submit(self, script: Path, *args: str, options=(), env: dict | None = None) -> str:
        """Submit ``script`` with sbatch ``options`` and script ``args``; return the job id.

        Parameters
        ----------
        script : Path
            The batch script.
        *args : str
            Arguments of the script.
        options : sequence of str
            sbatch options, e.g. ``("--array=1-3", "--chdir=/tmp/x")``.
        env : dict, optional
            Variables added to the job's environment (sbatch exports its whole environment).
        """
        return self.run("sbatch", "--parsable", *options, str(script), *args, env=env).strip().split(";")[0]

    def states(self, job_id: str) -> dict[str, tuple[str, str]]:
        """Return ``{array task id: (state, exit code)}`` of a job, as ``scontrol show job`` sees it."""
        states = {}
        for line in self.run("scontrol", "show", "job", "-o", job_id).splitlines():
            fields = dict(re.findall(r"(\w+)=(\S*)", line))
            if "JobState" in fields:
                states[fields.get("ArrayTaskId", fields["JobId"])] = (fields["JobState"], fields.get("ExitCode", ""))
        return states

    def wait(self, job_id: str, timeout: float) -> dict[str, tuple[str, str]]:
        """Wait until every task of ``job_id`` has finished; return :meth:`states`.

        After ``timeout`` seconds the job is cancelled and the states returned as they are,
        so the caller's assertions report the unfinished tasks.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = self.states(job_id)
            if states and all(state in FINISHED for state, _ in states.values()):
                return states
            time.sleep(1)
        logger.warning("job %s still running after %s s; cancelling it", job_id, timeout)
        self.run("scancel", job_id)
        return self.states(job_id)

    def daemon_logs(self, tail: int = 3000) -> str:
        """Return the ends of the slurmctld and slurmd logs (for failure messages)."""
        parts = []
        for name in ("slurmctld.log", "slurmd.log", "slurmctld.out", "slurmd.out"):
            path = self.root / name
            if path.exists():
                parts.append(f"--- {name}\n{path.read_text(errors='replace')[-tail:]}")
        return "\n".join(parts)

    def stop(self) -> None:
        """Cancel the jobs still queued or running; stop the daemons (TERM, then KILL after 10 s)."""
        with contextlib.suppress(Exception):
            self.run("scancel", "--partition=test")
            deadline = time.monotonic() + 20
            while self.run("squeue", "-h").strip() and time.monotonic() < deadline:
                time.sleep(0.5)
        for process in reversed(self.daemons):
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


def _node_line() -> str:
    """Return the ``NodeName=...`` line ``slurmd -C`` reports for this machine."""
    output = subprocess.run([_which("slurmd"), "-C"], capture_output=True, text=True, timeout=30).stdout
    line = next(line for line in output.splitlines() if line.startswith("NodeName="))
    return f"{line} NodeAddr=127.0.0.1 State=UNKNOWN"  # works where the hostname does not resolve


def _start(cluster: SlurmCluster) -> None:
    """Write the configuration in the cluster's directory and start slurmctld and slurmd on it."""
    root = cluster.root
    for folder in ("state", "spool"):
        (root / folder).mkdir()
    node = _node_line()
    host = re.match(r"NodeName=(\S+)", node).group(1)
    Path(cluster.env["SLURM_CONF"]).write_text(SLURM_CONF.format(
        host=host, root=root, node=node, ctld_port=_free_port(), slurmd_port=_free_port()))
    for daemon in ("slurmctld", "slurmd"):
        with open(root / f"{daemon}.out", "wb") as out:
            cluster.daemons.append(subprocess.Popen(
                [_which(daemon), "-D", "-f", cluster.env["SLURM_CONF"]], stdout=out, stderr=subprocess.STDOUT,
                env=cluster.env, start_new_session=True))


def _node_idle(cluster: SlurmCluster) -> bool:
    if any(process.poll() is not None for process in cluster.daemons):
        pytest.fail(f"a SLURM daemon exited while starting\n{cluster.daemon_logs()}")
    try:
        return cluster.run("sinfo", "-h", "-N", "-o", "%T").strip() == "idle"
    except RuntimeError:
        return False


@pytest.fixture(scope="session")
def slurm_cluster():
    """Start a one-node SLURM cluster for the session; stop it and remove its files at the end.

    Yields
    ------
    SlurmCluster
        With ``env`` for client commands and ``submit``, ``wait``, ``states`` helpers.
    """
    _install()
    _kill_leftovers()
    start = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix=PREFIX))
    os.chmod(root, 0o755)
    (root / "owner").write_text(str(os.getpid()))
    cluster = SlurmCluster(root=root, env={**os.environ, "SLURM_CONF": str(root / "slurm.conf")})
    munged = None
    try:
        munged = _start_munge()
        if munged:
            (root / "munged").write_text(str(munged))
        _start(cluster)
        _wait_for(lambda: _node_idle(cluster), 60, "the SLURM node to be idle", cluster.daemon_logs)
        logger.info("SLURM cluster up in %.1f s", time.monotonic() - start)
        yield cluster
    finally:
        cluster.stop()
        if munged:
            os.kill(munged, signal.SIGTERM)
        shutil.rmtree(root, ignore_errors=True)
