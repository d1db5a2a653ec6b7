"""The local Boss v1 server (tests/support/boss_server.py) driven through the unmodified intern BossRemote."""

import numpy as np
import pytest
import requests
from boss_server import BossServer
from intern.resource.boss.resource import ChannelResource
from requests import HTTPError


@pytest.fixture
def server():
    with BossServer() as boss:
        yield boss


@pytest.fixture
def stack():
    return np.random.default_rng(7).integers(1, 250, size=(6, 40, 50), dtype=np.uint8)


def _status(info) -> int:
    return info.value.response.status_code


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "uint64"])
def test_pushed_cutout_comes_back_equal(server, dtype):
    server.add_channel("col", "exp", "seed", np.ones((8, 32, 48), dtype=np.uint8))
    remote = server.remote()
    created = remote.create_project(ChannelResource(f"c_{dtype}", "col", "exp", datatype=dtype))
    assert (created.datatype, created.type, created.cutout_ready) == (dtype, "image", True)
    high = np.iinfo(dtype).max
    data = np.random.default_rng(1).integers(1, high, size=(5, 20, 30), dtype=dtype, endpoint=True)
    data[0, 0, 0] = high  # uint64 values beyond 2**53 must survive the trip
    channel = remote.get_channel(f"c_{dtype}", "col", "exp")
    remote.create_cutout(channel, 0, [10, 40], [4, 24], [2, 7], data)
    back = remote.get_cutout(channel, 0, [10, 40], [4, 24], [2, 7], parallel=False)
    assert back.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(back, data)
    np.testing.assert_array_equal(server.array("col", "exp", f"c_{dtype}")[2:7, 4:24, 10:40], data)
    assert server.array("col", "exp", f"c_{dtype}")[:2].max() == 0


def test_cutout_is_the_seeded_slice_in_zyx(server, stack):
    server.add_channel("col", "exp", "em", stack, offset_zyx=(3, 100, 200))
    remote = server.remote()
    channel = remote.get_channel("em", "col", "exp")
    part = remote.get_cutout(channel, 0, [210, 245], [105, 130], [4, 8], parallel=False)
    np.testing.assert_array_equal(part, stack[1:5, 5:30, 10:45])
    whole = remote.get_cutout(channel, 0, [200, 250], [100, 140], [3, 9], parallel=False)
    np.testing.assert_array_equal(whole, stack)
    assert server.log[-1][1].endswith("/0/200:250/100:140/3:9/?access-mode=no-cache")


def test_metadata_reads_back(server, stack):
    server.add_channel("col", "exp", "em", stack, voxel_size=(30, 4, 4.5), offset_zyx=(3, 100, 200))
    remote = server.remote()
    channel = remote.get_channel("em", "col", "exp")
    assert (channel.datatype, channel.type, channel.base_resolution, channel.downsample_status) == \
        ("uint8", "image", 0, "NOT_DOWNSAMPLED")
    experiment = remote.get_experiment("col", "exp")
    assert (experiment.coord_frame, experiment.num_hierarchy_levels, experiment.hierarchy_method) == \
        ("col_exp", 1, "anisotropic")
    frame = remote.get_coordinate_frame(experiment.coord_frame)
    assert (frame.x_start, frame.x_stop, frame.y_start, frame.y_stop, frame.z_start, frame.z_stop) == \
        (200, 250, 100, 140, 3, 9)
    assert (frame.x_voxel_size, frame.y_voxel_size, frame.z_voxel_size, frame.voxel_unit) == \
        (4.5, 4, 30, "nanometers")
    assert remote.get_extents(experiment) == [[200, 250], [100, 140], [3, 9]]
    assert remote.list_collections() == ["col"]
    assert remote.list_experiments("col") == ["exp"]
    assert remote.list_channels("col", "exp") == ["em"]
    assert remote.list_coordinate_frames() == ["col_exp"]


def test_downsampled_levels_halve_x_and_y(server, stack):
    server.add_channel("col", "exp", "em", stack, levels=3)
    remote = server.remote()
    channel = remote.get_channel("em", "col", "exp")
    assert channel.downsample_status == "DOWNSAMPLED"
    half = remote.get_cutout(channel, 1, [0, 25], [0, 20], [0, 6], parallel=False)
    np.testing.assert_array_equal(half, stack[:, ::2, ::2])
    np.testing.assert_array_equal(server.array("col", "exp", "em", 2), stack[:, ::4, ::4])
    with pytest.raises(HTTPError) as info:  # level 1 is only 25 voxels wide
        remote.get_cutout(channel, 1, [0, 26], [0, 20], [0, 6], parallel=False)
    assert _status(info) == 400
    with pytest.raises(HTTPError) as info:
        remote.get_cutout(channel, 3, [0, 4], [0, 4], [0, 1], parallel=False)
    assert _status(info) == 400 and "Invalid resolution 3" in info.value.response.json()["detail"]


def test_wrong_or_missing_token_is_403(server, stack):
    server.add_channel("col", "exp", "em", stack)
    with pytest.raises(HTTPError) as info:
        server.remote(token="not-the-token").get_channel("em", "col", "exp")
    assert _status(info) == 403 and info.value.response.json()["detail"] == "Invalid token."
    bare = requests.get(f"{server.url}/v1/collection/col/", timeout=5)
    assert bare.status_code == 403 and "detail" in bare.json()


def test_unknown_resources_are_404(server, stack):
    server.add_channel("col", "exp", "em", stack)
    remote = server.remote()
    with pytest.raises(HTTPError) as info:
        remote.get_channel("nope", "col", "exp")
    assert _status(info) == 404 and info.value.response.json()["detail"] == "Channel nope not found"
    with pytest.raises(HTTPError) as info:
        remote.get_experiment("col", "nope")
    assert _status(info) == 404
    ghost = ChannelResource("em", "nope", "exp", datatype="uint8")
    with pytest.raises(HTTPError) as info:
        remote.get_cutout(ghost, 0, [0, 4], [0, 4], [0, 1], parallel=False)
    assert _status(info) == 404 and "Collection nope" in info.value.response.json()["detail"]


def test_bad_boxes_are_400(server, stack):
    server.add_channel("col", "exp", "em", stack)
    remote = server.remote()
    channel = remote.get_channel("em", "col", "exp")
    with pytest.raises(HTTPError) as info:
        remote.get_cutout(channel, 0, [40, 60], [0, 10], [0, 2], parallel=False)
    assert _status(info) == 400 and "Incorrect cutout arguments" in info.value.response.json()["detail"]
    with pytest.raises(HTTPError) as info:  # start == stop passes intern's own check
        remote.get_cutout(channel, 0, [5, 5], [0, 10], [0, 2], parallel=False)
    assert _status(info) == 400
    headers = {"Authorization": f"Token {server.token}"}
    for path in ("0/a:5/0:10/0:2/", "0/0:5/0:10/", "x/0:5/0:10/0:2/", "0/0:5/0:10/0:2/3:4/"):
        answer = requests.get(f"{server.url}/v1/cutout/col/exp/em/{path}", headers=headers, timeout=5)
        assert answer.status_code == 400 and answer.json()["detail"], path


def test_body_of_the_wrong_dtype_is_400(server, stack):
    server.add_channel("col", "exp", "em", stack)
    remote = server.remote()
    channel = remote.get_channel("em", "col", "exp")
    with pytest.raises(HTTPError) as info:
        remote.create_cutout(channel, 0, [0, 4], [0, 4], [0, 2], np.ones((2, 4, 4), dtype=np.uint16))
    assert _status(info) == 400 and "do not match" in info.value.response.json()["detail"]
    np.testing.assert_array_equal(server.array("col", "exp", "em"), stack)


def test_channel_creation_checks(server, stack):
    server.add_channel("col", "exp", "em", stack)
    remote = server.remote()
    with pytest.raises(HTTPError) as info:
        remote.create_project(ChannelResource("em", "col", "exp", datatype="uint8"))
    assert _status(info) == 400
    with pytest.raises(HTTPError) as info:
        remote.create_project(ChannelResource("new", "col", "nope", datatype="uint8"))
    assert _status(info) == 404
    headers = {"Authorization": f"Token {server.token}"}
    for fields in ({"datatype": "float32"}, {"datatype": "uint8", "type": "annotation"}):
        answer = requests.post(f"{server.url}/v1/collection/col/experiment/exp/channel/bad/", json=fields,
                               headers=headers, timeout=5)
        assert answer.status_code == 400, fields
    assert remote.list_channels("col", "exp") == ["em"]


def test_injected_503_raises_http_error_once(server, stack):
    server.add_channel("col", "exp", "em", stack)
    remote = server.remote()
    channel = remote.get_channel("em", "col", "exp")
    server.fail_next(1, "503")
    with pytest.raises(HTTPError) as info:
        remote.get_cutout(channel, 0, [0, 10], [0, 10], [0, 2], parallel=False)
    assert _status(info) == 503
    np.testing.assert_array_equal(remote.get_cutout(channel, 0, [0, 10], [0, 10], [0, 2], parallel=False),
                                  stack[:2, :10, :10])
    assert server.cutout_requests == 2


def test_injected_drop_breaks_the_transfer_once(server, stack):
    server.add_channel("col", "exp", "em", stack)
    remote = server.remote()
    channel = remote.get_channel("em", "col", "exp")
    server.fail_next(1, "drop")
    with pytest.raises(requests.exceptions.ChunkedEncodingError, match="IncompleteRead"):
        remote.get_cutout(channel, 0, [0, 50], [0, 40], [0, 6], parallel=False)
    np.testing.assert_array_equal(remote.get_cutout(channel, 0, [0, 50], [0, 40], [0, 6], parallel=False), stack)
    assert server.cutout_requests == 2


def test_large_pulls_are_split_into_several_requests(server, stack):
    server.add_channel("col", "exp", "em", stack)
    remote = server.remote()
    channel = remote.get_channel("em", "col", "exp")
    whole = remote.get_cutout(channel, 0, [0, 50], [0, 40], [0, 6], parallel=False, chunk_size=(32, 32, 4))
    np.testing.assert_array_equal(whole, stack)
    assert server.cutout_requests == 2 * 2 * 2  # x 0:32,32:50 / y 0:32,32:40 / z 0:4,4:6


def test_to_black_zeroes_and_all_zero_pushes_are_not_sent(server, stack):
    server.add_channel("col", "exp", "em", stack)
    remote = server.remote()
    channel = remote.get_channel("em", "col", "exp")
    sent = len(server.log)
    remote.create_cutout(channel, 0, [0, 10], [0, 10], [0, 2], np.zeros((2, 10, 10), dtype=np.uint8))
    assert len(server.log) == sent  # intern skips the request when the array sums to zero
    remote.create_cutout_to_black(channel, 0, [0, 10], [0, 10], [0, 2])
    assert server.log[-1] == ("PUT", "/v1/cutout/to_black/col/exp/em/0/0:10/0:10/0:2/")
    expected = stack.copy()
    expected[:2, :10, :10] = 0
    np.testing.assert_array_equal(server.array("col", "exp", "em"), expected)


def test_filter_keeps_only_the_listed_ids(server):
    labels = np.arange(2 * 4 * 4, dtype=np.uint64).reshape(2, 4, 4) % 5
    server.add_channel("col", "exp", "seg", labels, channel_type="annotation")
    remote = server.remote()
    channel = remote.get_channel("seg", "col", "exp")
    kept = remote.get_cutout(channel, 0, [0, 4], [0, 4], [0, 2], id_list=[1, 3], parallel=False)
    np.testing.assert_array_equal(kept, np.where(np.isin(labels, [1, 3]), labels, 0))
