"""Connecting: every backend answers; an unreachable server gets a message that helps."""

import socket

import pytest

from neuropipe.config import Settings
from neuropipe.database import connect
from neuropipe.errors import DatabaseUnreachableError


def test_each_backend_connects_and_answers(settings):
    connection = connect(settings)
    assert connection.query("SELECT 1").fetchone()[0] == 1
    assert connection.is_connected


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("backend", ["postgresql", "mysql"])
def test_unreachable_server_names_host_and_how_to_configure(backend, tmp_path):
    port = free_port()
    settings = Settings(host="127.0.0.1", port=port, user="root", backend=backend, store=tmp_path)
    with pytest.raises(DatabaseUnreachableError) as caught:
        connect(settings)
    message = str(caught.value)
    assert f"{backend} server at 127.0.0.1:{port}" in message
    assert "DJ_HOST" in message and "dj_local_conf.json" in message
