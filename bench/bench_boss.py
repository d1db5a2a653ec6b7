"""Pull and push throughput through the local Boss v1 server, against a local ``.npy``.

The server is the one the tests use (``tests/support/boss_server.py``, Python's threaded
HTTP server: what is measured is neuropipe's and intern's client path, not a real Boss).
A volume is pushed through ``neuropipe.io.boss.write_cutout`` (the path of the export tables)
and pulled through ``neuropipe.io.read_volume("bossdb://...")``, each with 1 and with 4 blocks
in flight, and read from a memory-mapped ``.npy`` for comparison.  Run by hand:

    python bench/bench_boss.py [--depth 64] [--size 1024]

The last line is one JSON object with MB/s figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))
from boss_server import BossServer  # noqa: E402

from neuropipe.io import boss, read_volume  # noqa: E402


def main() -> None:
    """Push, pull with 1 and 4 threads, read the .npy; print the table and the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=64, help="z planes (default 64)")
    parser.add_argument("--size", type=int, default=1024, help="x and y extent (default 1024)")
    args = parser.parse_args()
    volume = np.random.default_rng(0).integers(0, 255, size=(args.depth, args.size, args.size), dtype=np.uint8)
    megabytes = volume.nbytes / 1e6
    results = {}
    with BossServer() as server:
        os.environ.update(NEUROPIPE_BOSS_HOST=server.host, NEUROPIPE_BOSS_PROTOCOL="http",
                          NEUROPIPE_BOSS_TOKEN=server.token)
        server.add_channel("bench", "exp", "em", np.zeros_like(volume))
        remote = server.remote()
        channel = remote.get_channel("em", "bench", "exp")
        box = tuple((0, size) for size in volume.shape)
        for threads in (1, 4):
            start = time.perf_counter()
            boss.write_cutout(remote, channel, box, volume, uri="bossdb://bench/exp/em", threads=threads)
            results[f"push_{threads}_mb_per_s"] = megabytes / (time.perf_counter() - start)
        for threads in (1, 4):
            boss.THREADS = threads
            start = time.perf_counter()
            pulled = read_volume("bossdb://bench/exp/em")
            results[f"pull_{threads}_mb_per_s"] = megabytes / (time.perf_counter() - start)
            assert np.array_equal(pulled, volume)
    with tempfile.TemporaryDirectory() as folder:
        np.save(Path(folder) / "v.npy", volume)
        start = time.perf_counter()
        np.array(read_volume(f"file://{folder}/v.npy"))  # the copy makes the memory map read every page
        results["npy_mb_per_s"] = megabytes / (time.perf_counter() - start)
    print(f"volume {volume.shape} uint8 ({megabytes:.0f} MB), blocks {boss.BLOCK_ZYX} (ZYX)")
    for name, value in results.items():
        print(f"{name:<20}{value:>10.1f} MB/s")
    print(json.dumps({name: round(value, 1) for name, value in results.items()}))


if __name__ == "__main__":
    main()
