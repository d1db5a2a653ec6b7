"""neuropipe watch: new volumes in a folder or a Boss collection become Dataset rows, once each."""

import os
import time

import h5py
import numpy as np
import pytest
import zarr
from volume_files import write_precomputed

from neuropipe.cli import main
from neuropipe.watch import register, scan, watch

SERVERS = pytest.mark.parametrize("settings", ["postgresql", "mysql"], indirect=True)


def age(path, seconds=60):
    """Backdate ``path`` (and everything in it) so that it counts as settled."""
    then = time.time() - seconds
    for item in [path, *(path.rglob("*") if path.is_dir() else [])]:
        os.utime(item, (then, then))


@pytest.fixture
def folder(tmp_path):
    """A folder of volumes in every format, settled, plus a fresh, a corrupt and an ambiguous file."""
    image = np.random.default_rng(4).integers(1, 255, size=(4, 16, 20), dtype=np.uint8)
    np.save(tmp_path / "Stack A.npy", image)
    (tmp_path / "sub").mkdir()
    zarr.create_array(store=str(tmp_path / "sub" / "b.zarr"), data=image, chunks=(2, 8, 8))
    with h5py.File(tmp_path / "c.h5", "w") as handle:
        handle.create_dataset("raw", data=image)
        handle["raw"].attrs["resolution"] = [40.0, 4.0, 4.0]
    write_precomputed(tmp_path / "layer", image)
    (tmp_path / "junk.tif").write_bytes(b"II*\x00 truncated")
    np.savez(tmp_path / "two.npz", image=image, labels=image > 9)
    (tmp_path / "notes.txt").write_text("not a volume")
    for item in tmp_path.iterdir():
        age(item)
    np.save(tmp_path / "fresh.npy", image)  # still being written, as far as anyone can tell
    return tmp_path


def test_a_scan_takes_settled_readable_volumes(folder):
    found = {item.name: item.source for item in scan(str(folder), settle=5)}
    assert found == {"stack_a": (folder / "Stack A.npy").as_uri(), "sub_b": (folder / "sub" / "b.zarr").as_uri(),
                     "c": (folder / "c.h5").as_uri(), "layer": f"precomputed://{(folder / 'layer').as_uri()}"}


@SERVERS
def test_watch_registers_once_and_picks_up_what_settles(pipeline, folder):
    dataset = pipeline.volume.Dataset
    assert sorted(watch(str(folder), dataset, once=True, settle=5)) == ["c", "layer", "stack_a", "sub_b"]
    assert (dataset & {"dataset": "c"}).fetch1("voxel_z_nm") == 40.0  # from the HDF5 metadata
    assert watch(str(folder), dataset, once=True, settle=5) == []  # idempotent
    age(folder / "fresh.npy")
    np.save(folder / "Stack-A.npy", np.ones((2, 3, 4), np.uint8))  # same name, other source
    age(folder / "Stack-A.npy")
    added = watch(str(folder), dataset, once=True, settle=5, voxel_size=(30, 5, 5))
    assert len(added) == 2 and "fresh" in added and any(name.startswith("stack_a_") for name in added)
    assert (dataset & {"dataset": "fresh"}).fetch1("voxel_y_nm") == 5.0
    assert len(dataset()) == 6


@SERVERS
def test_a_boss_collection_is_watched_for_image_channels(pipeline, monkeypatch):
    from boss_server import BossServer

    with BossServer() as server:
        for variable, value in {"NEUROPIPE_BOSS_HOST": server.host, "NEUROPIPE_BOSS_PROTOCOL": "http",
                                "NEUROPIPE_BOSS_TOKEN": server.token}.items():
            monkeypatch.setenv(variable, value)
        server.add_channel("lab", "mouse1", "em", np.ones((2, 8, 8), np.uint8), voxel_size=(30, 4, 4))
        server.add_channel("lab", "mouse1", "cells", np.ones((2, 8, 8), np.uint64), channel_type="annotation")
        server.add_channel("lab", "mouse2", "em", np.ones((2, 8, 8), np.uint16))
        names = register(scan("bossdb://lab"), pipeline.volume.Dataset)
    assert sorted(names) == ["mouse1_em", "mouse2_em"]
    assert (pipeline.volume.Dataset & {"dataset": "mouse1_em"}).fetch1("source", "voxel_z_nm") == \
        ("bossdb://lab/mouse1/em", 30.0)


@pytest.mark.parametrize("settings", ["postgresql"], indirect=True)
def test_the_command_registers_and_reports(pipeline, settings, folder, monkeypatch, capsys):
    for variable, value in {"DJ_HOST": settings.host, "DJ_PORT": str(settings.port), "DJ_USER": settings.user,
                            "DJ_PASS": "", "DJ_BACKEND": settings.backend,
                            "NEUROPIPE_SCHEMA_PREFIX": settings.schema_prefix,
                            "NEUROPIPE_STORE": str(settings.store)}.items():
        monkeypatch.setenv(variable, value)
    assert main(["watch", str(folder), "--once", "--settle", "0"]) == 0
    assert "registered 5 dataset(s)" in capsys.readouterr().out
    assert main(["watch", str(folder), "--once"]) == 0
    assert "registered 0 dataset(s)" in capsys.readouterr().out
