"""Shared fixtures: real database servers, the embedded PostgreSQL, and a bound pipeline.

Database tests run against every backend neuropipe supports: the MariaDB and PostgreSQL
servers (127.0.0.1:3306 and :5432, or as ``NEUROPIPE_TEST_MYSQL`` / ``NEUROPIPE_TEST_POSTGRES``
say, as ``host:port``) and the embedded PostgreSQL started from the pip package.  Each test
binds the pipeline to schemas of its own (a random prefix) and drops them afterwards, so
tests can repeat and run in parallel.  Where a server is down the test is skipped with the
reason, except under CI (``CI`` set), where a missing server is a failure.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from neuropipe.config import Settings

SUPPORT = Path(__file__).resolve().parent / "support"  # importable helper modules (toy_pipeline)
sys.path.insert(0, str(SUPPORT))
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ISBI = SHARED_DATA / "isbi2012" / "isbi2012_train.npz"
BACKENDS = ("postgresql", "mysql", "embedded")


def pytest_configure(config):
    """Under pytest-xdist, give each test process its share of the cores for torch.

    Each process would otherwise start as many torch threads as the machine has cores, and
    two training tests side by side would spin against each other.  Processes the tests
    start (workers, benchmarks) choose their own threads.
    """
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def _address(variable: str, default: str) -> tuple[str, int]:
    host, _, port = os.environ.get(variable, default).rpartition(":")
    return host, int(port)


SERVERS = {
    "postgresql": _address("NEUROPIPE_TEST_POSTGRES", "127.0.0.1:5432"),
    "mysql": _address("NEUROPIPE_TEST_MYSQL", "127.0.0.1:3306"),
}


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture
def bare_environment(monkeypatch):
    """No variable neuropipe reads its settings from is set (nor AWS's store fallbacks) for the test."""
    from neuropipe.config import _ENVIRONMENT

    for variable in (*_ENVIRONMENT, "NEUROPIPE_CONFIG", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION",
                     "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(variable, raising=False)


@pytest.fixture
def config_file(tmp_path):
    """Write ``dj_local_conf.json`` with the given keys into the test's folder: ``config_file(**values)``, its path."""
    import json

    def write(**values) -> Path:
        path = tmp_path / "dj_local_conf.json"
        path.write_text(json.dumps(values))
        return path

    return write


@pytest.fixture(scope="session")
def neuropipe_home():
    """A private neuropipe data directory (embedded server, samples) for the test session.

    It lies directly under the system temporary directory, not pytest's (mode 700 for root),
    because under root the embedded server runs as an unprivileged user that must reach it.
    """
    home = Path(tempfile.mkdtemp(prefix="neuropipe-test-"))
    os.chmod(home, 0o755)
    previous = os.environ.get("NEUROPIPE_HOME")
    os.environ["NEUROPIPE_HOME"] = str(home)
    yield home
    if previous is None:
        os.environ.pop("NEUROPIPE_HOME", None)
    else:
        os.environ["NEUROPIPE_HOME"] = previous
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def embedded_server(neuropipe_home):
    """The embedded PostgreSQL of the test session, stopped at its end.

    On a free port of its own rather than the preferred 54329: test processes running in
    parallel each start one, and two could otherwise both find 54329 free and race for it.
    """
    from private_servers import free_port

    from neuropipe.embedded import EmbeddedPostgres

    server = EmbeddedPostgres(neuropipe_home / "pgdata", port=free_port())
    yield server
    server.stop()


def backend_settings(backend: str, store: Path, request) -> Settings:
    """Return settings for ``backend``, skipping (or failing under CI) when it is down."""
    if backend == "embedded":
        info = request.getfixturevalue("embedded_server").ensure_running()
        return Settings(host=info.host, port=info.port, user=info.user, backend="postgresql", store=store)
    host, port = SERVERS[backend]
    if not _reachable(host, port):
        message = f"no {backend} server at {host}:{port} (start it, or set NEUROPIPE_TEST_*)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return Settings(host=host, port=port, user="root", backend=backend, store=store)


@pytest.fixture(params=BACKENDS)
def settings(request, tmp_path_factory) -> Settings:
    """Settings of one database backend, with a store and schema prefix of the test's own."""
    store = tmp_path_factory.mktemp("store")
    prefix = f"nptest_{secrets.token_hex(4)}_"
    return backend_settings(request.param, store, request).with_overrides(schema_prefix=prefix)


def _store_environment(settings) -> dict:
    from s3_server import store_environment

    return store_environment(settings)


def bound_pipeline(settings):
    """Bind the bundled pipeline to fresh schemas of ``settings``; drop them when the generator closes."""
    import schemas
    from neuropipe.database import connect
    from neuropipe.worker import registry

    connection = connect(settings)
    schemas.activate(settings.schema_prefix, connection)
    registry.activate(settings.schema_prefix, connection)
    yield schemas
    schemas.drop()
    registry.drop()


@pytest.fixture
def pipeline(settings):
    """The bundled pipeline bound to fresh schemas on one backend; dropped afterwards."""
    yield from bound_pipeline(settings)


@pytest.fixture(scope="session")
def s3_server():
    """The S3-compatible server of moto on 127.0.0.1, for the session (``tests/support/s3_server.py``)."""
    from s3_server import S3Server, moto_missing

    if reason := moto_missing():
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    server = S3Server()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def s3_settings(settings, s3_server) -> Settings:
    """Settings of one backend whose store is a fresh prefix of a bucket on the session's S3 server."""
    from s3_server import ACCESS_KEY, SECRET_KEY

    return settings.with_overrides(store=s3_server.bucket(), store_endpoint=s3_server.endpoint,
                                   store_region="us-east-1", store_access_key=ACCESS_KEY, store_secret_key=SECRET_KEY)


@pytest.fixture
def s3_proxy(s3_server):
    """A proxy to the S3 server that counts what it sends and can cut every connection (``CutProxy``)."""
    from s3_server import CutProxy

    proxy = CutProxy(s3_server.port)
    yield proxy
    proxy.close()


@pytest.fixture
def s3_pipeline(s3_settings):
    """The bundled pipeline on fresh schemas, its arrays in the S3 store of :func:`s3_settings`."""
    yield from bound_pipeline(s3_settings)


@pytest.fixture
def environment(pipeline, settings, monkeypatch):
    """The bound pipeline, with the command line (and worker processes) pointed at the test's server, schemas, store."""
    for variable, value in {"DJ_HOST": settings.host, "DJ_PORT": str(settings.port), "DJ_USER": settings.user,
                            "DJ_PASS": "", "DJ_BACKEND": settings.backend,
                            "NEUROPIPE_SCHEMA_PREFIX": settings.schema_prefix,
                            **_store_environment(settings)}.items():
        monkeypatch.setenv(variable, value)
    return pipeline


@pytest.fixture(scope="session", params=["mysql", "postgresql"])
def private_server(request):
    """A MariaDB or PostgreSQL server of the session's own, which tests may restart and crash.

    Initialised in a fresh directory on a free port (``tests/support/private_servers.py``);
    the shared servers are never touched.
    """
    from private_servers import PrivateMariaDB, PrivatePostgres

    if request.param == "mysql" and (missing := PrivateMariaDB.missing_tools()):
        message = f"cannot start a private MariaDB: {', '.join(missing)} not found (Debian: mariadb-server)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    root = Path(tempfile.mkdtemp(prefix=f"neuropipe-private-{request.param}-"))
    server = (PrivateMariaDB if request.param == "mysql" else PrivatePostgres)(root)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def isbi_path() -> Path:
    """The ISBI 2012 training stack from ../shared (skipped where absent)."""
    if not ISBI.is_file():
        pytest.skip(f"ISBI 2012 stack not found at {ISBI} (it lives in the shared data folder beside the repo)")
    return ISBI


@pytest.fixture
def nuclei_files(tmp_path):
    """Training, evaluation and empty volumes of touching nuclei (npz: image, cells) for the learned option."""
    from neuropipe import ops

    paths = {}
    for name, seed in (("train", 1), ("eval", 2)):
        sample = ops.make_nuclei((24, 48, 48), seed=seed, packing=0.75)
        paths[name] = tmp_path / f"{name}.npz"
        np.savez(paths[name], image=sample.image, cells=sample.nuclei)
    paths["empty"] = tmp_path / "empty.npz"
    np.savez(paths["empty"], image=sample.image, cells=np.zeros_like(sample.nuclei))
    return paths
