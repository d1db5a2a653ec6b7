"""A local S3-compatible server for tests (moto's server mode), and a proxy whose connection can be cut.

:class:`S3Server` runs ``python -m moto.server`` on a free port of 127.0.0.1 in a process of
its own (workers in other processes reach it over HTTP, as they would reach AWS or MinIO);
:meth:`S3Server.bucket` creates a bucket and returns the ``s3://`` store URL of a fresh
prefix in it.  :class:`CutProxy` forwards a port to the server and can refuse and reset every
connection for a while (:meth:`CutProxy.cut`, :meth:`CutProxy.restore`): the store becoming
unreachable mid-job, with what was written before still there afterwards.
"""

from __future__ import annotations

import secrets
import socket
import subprocess
import sys
import threading

from private_servers import free_port, wait_for

ACCESS_KEY, SECRET_KEY = "testing-key", "testing-secret"  # moto accepts any; the tests check they are passed


class S3Server:
    """moto's S3 server on 127.0.0.1 in a process of its own."""

    def __init__(self):
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._process = None

    def start(self) -> None:
        """Start the server and wait until it answers."""
        self._process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: _answers(self.port), 30, "moto's S3 server to answer")

    def stop(self) -> None:
        """Stop the server."""
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)

    def client(self):
        """Return a boto3 client of the server (the tests' own view of what is stored)."""
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, region_name="us-east-1")

    def bucket(self, name: str | None = None) -> str:
        """Create a bucket (once) and return the store URL of a fresh prefix in it."""
        name = name or "neuropipe-test"
        client = self.client()
        if name not in [bucket["Name"] for bucket in client.list_buckets().get("Buckets", [])]:
            client.create_bucket(Bucket=name)
        return f"s3://{name}/run-{secrets.token_hex(4)}"

    def keys(self, url: str) -> list[str]:
        """Return every object key under a store URL's prefix."""
        bucket, _, prefix = url[len("s3://"):].partition("/")
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/")
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


class CutProxy:
    """Forward a port to a server's; :meth:`cut` refuses and resets connections until :meth:`restore`."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._open: set = set()
        self._lock = threading.Lock()
        self.bytes_from_server = 0  # what clients were sent, for tests of how much a read fetches
        self._listener = None
        self.restore()

    def restore(self) -> None:
        """Listen (again) and forward every new connection."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def close(self) -> None:
        """Stop forwarding for good."""
        if self._listener is not None:
            self.cut()

    def cut(self) -> None:
        """Stop listening (new connections are refused) and reset every open one."""
        listener, self._listener = self._listener, None
        try:
            listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept(); close() alone would not
        except OSError:
            pass
        listener.close()
        with self._lock:
            for connection in list(self._open):
                _reset(connection)
            self._open.clear()

    def _accept(self, listener) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                _reset(client)
                continue
            with self._lock:
                self._open.update((client, server))
            for source, target in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, target, source is server), daemon=True).start()

    def _pump(self, source, target, count: bool) -> None:
        try:
            while data := source.recv(1 << 16):
                target.sendall(data)
                if count:
                    with self._lock:
                        self.bytes_from_server += len(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._open.discard(source)
                self._open.discard(target)
            for end in (source, target):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def store_environment(settings) -> dict:
    """Return the variables that give worker processes ``settings``' store (an object store's keys included)."""
    names = {"NEUROPIPE_STORE": settings.store, "NEUROPIPE_STORE_ENDPOINT": settings.store_endpoint,
             "NEUROPIPE_STORE_REGION": settings.store_region, "NEUROPIPE_STORE_ACCESS_KEY": settings.store_access_key,
             "NEUROPIPE_STORE_SECRET_KEY": settings.store_secret_key}
    return {name: str(value) for name, value in names.items() if value is not None}


def _reset(connection) -> None:
    """Close a socket with a TCP reset, as a vanished peer would."""
    try:
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        connection.close()
    except OSError:
        pass


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def moto_missing() -> str | None:
    """Return why the tests cannot run an S3 server here, or None."""
    for module in ("moto.server", "s3fs", "boto3"):
        try:
            __import__(module)
        except ImportError:
            return f"{module} is not installed (pip install -e '.[test]')"
    return None

