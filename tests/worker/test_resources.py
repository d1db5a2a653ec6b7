"""What a worker offers and the tables it takes; process settings a worker applies to itself."""

import platform

import pytest

from neuropipe.worker.resources import Resources, limit_malloc_arenas


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc arenas are a glibc setting")
def test_malloc_arenas_are_limited_unless_the_environment_says(monkeypatch):
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert limit_malloc_arenas() is True
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_malloc_arenas() is False


def test_a_worker_takes_a_table_only_with_the_gpu_memory_and_cores_it_needs():
    class Table:
        resources = {"gpu": False, "memory_gb": 4.0, "cpus": 2}

    assert Resources(memory_gb=8, cpus=2).can_run(Table)
    assert not Resources(memory_gb=2, cpus=4).can_run(Table)  # too little memory
    assert not Resources(memory_gb=8, cpus=1).can_run(Table)  # too few cores (a CWL tool's coresMin)
    Table.resources = {"gpu": True}
    assert not Resources(memory_gb=8).can_run(Table) and Resources(gpus=(0,)).can_run(Table)
