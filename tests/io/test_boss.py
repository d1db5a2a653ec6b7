"""bossdb:// sources read through intern's real BossRemote from the local Boss server."""

import numpy as np
import pytest
from boss_server import BossServer

from neuropipe.errors import BadInputError, TransientError
from neuropipe.io import boss, read_volume, volume_shape, voxel_size


@pytest.fixture
def server(monkeypatch):
    """A local Boss server that neuropipe's settings point at."""
    with BossServer(token="s3cret-token-value") as running:
        monkeypatch.setenv("NEUROPIPE_BOSS_HOST", running.host)
        monkeypatch.setenv("NEUROPIPE_BOSS_PROTOCOL", "http")
        monkeypatch.setenv("NEUROPIPE_BOSS_TOKEN", running.token)
        yield running


@pytest.fixture
def stack():
    return np.random.default_rng(3).integers(1, 60000, size=(12, 40, 52), dtype=np.uint16)


def test_a_channel_reads_in_zyx_in_frame_coordinates(server, stack):
    server.add_channel("lab", "exp", "em", stack, voxel_size=(0.03, 0.004, 0.004), voxel_unit="micrometers",
                       offset_zyx=(5, 100, 200))
    uri = "bossdb://lab/exp/em"
    assert volume_shape(uri) == stack.shape and voxel_size(uri) == pytest.approx((30.0, 4.0, 4.0))
    np.testing.assert_array_equal(read_volume(uri, "6:10,110:130,210:250"), stack[1:5, 10:30, 10:50])
    with pytest.raises(BadInputError, match=r"starting at \(5, 100, 200\)"):
        read_volume(uri, "0:4,100:110,200:210")


def test_a_lower_resolution_halves_x_and_y(server, stack):
    server.add_channel("lab", "exp", "em", stack, voxel_size=(30, 4, 4), levels=2)
    uri = "bossdb://lab/exp/em?resolution=1"
    assert volume_shape(uri) == (12, 20, 26) and voxel_size(uri) == (30.0, 8.0, 8.0)
    np.testing.assert_array_equal(read_volume(uri), server.array("lab", "exp", "em", resolution=1))
    with pytest.raises(BadInputError, match="resolution 2 does not exist; the experiment has levels 0-1"):
        read_volume("bossdb://lab/exp/em?resolution=2")


def test_a_large_pull_is_split_into_blocks_fetched_in_parallel(server, stack, monkeypatch, caplog):
    monkeypatch.setattr(boss, "BLOCK_ZYX", (4, 16, 16))
    server.add_channel("lab", "exp", "em", stack)
    caplog.set_level("INFO", logger="neuropipe.io.boss")
    np.testing.assert_array_equal(read_volume("bossdb://lab/exp/em"), stack)
    assert server.cutout_requests == 3 * 3 * 4  # z 12/4, y 40/16 -> 3, x 52/16 -> 4
    assert "36 of 36 blocks" in caplog.text


def test_dropped_connections_are_retried_then_reported_without_the_token(server, stack, monkeypatch):
    monkeypatch.setattr(boss, "BLOCK_ZYX", (12, 40, 52))
    monkeypatch.setattr(boss, "ATTEMPTS", 3)
    server.add_channel("lab", "exp", "em", stack)
    server.fail_next(2, "drop")
    np.testing.assert_array_equal(read_volume("bossdb://lab/exp/em", "0:2,0:8,0:8"), stack[:2, :8, :8])
    assert server.cutout_requests == 3
    server.fail_next(3, "503")
    with pytest.raises(TransientError, match="failed 3 times in a row") as failure:
        read_volume("bossdb://lab/exp/em", "0:2,0:8,0:8")
    assert server.token not in str(failure.value)


def test_unknown_channels_and_bad_tokens_are_named(server, stack, monkeypatch):
    server.add_channel("lab", "exp", "em", stack)
    with pytest.raises(BadInputError, match="no such collection, experiment or channel .*404"):
        read_volume("bossdb://lab/exp/nope")
    monkeypatch.setenv("NEUROPIPE_BOSS_TOKEN", "wrong-token")
    with pytest.raises(BadInputError, match="refused access .*403.*boss.token") as refused:
        read_volume("bossdb://lab/exp/em")
    assert "wrong-token" not in str(refused.value)


def test_an_unreachable_server_is_transient(monkeypatch):
    monkeypatch.setenv("NEUROPIPE_BOSS_HOST", "127.0.0.1:9")
    monkeypatch.setenv("NEUROPIPE_BOSS_PROTOCOL", "http")
    monkeypatch.setenv("NEUROPIPE_BOSS_TOKEN", "t")
    with pytest.raises(TransientError, match="cannot reach the Boss server"):
        read_volume("bossdb://lab/exp/em")
