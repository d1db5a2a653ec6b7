"""Peak memory and speed of reading a bounding box from each source format.

A volume 16x larger than the box is written once as ``.npz`` (read whole: the peer), ``.npy``
(memory-mapped), zarr, HDF5 and precomputed; each read runs in a fresh process, which reports
its peak RSS above what it held before the read (Linux: the peak is reset through
``/proc/self/clear_refs`` after the imports).  Run by hand:

    python bench/bench_sources.py [--size 512] [--folder /tmp/bench-sources]

The last line is one JSON object: per format, ``peak_rss_over_box`` (peak extra memory / box
bytes) and ``mb_per_s``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np
import zarr

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))
from volume_files import write_precomputed  # noqa: E402

READ = """
import json, sys, time
from neuropipe.io import read_volume
import numpy as np, h5py, tensorstore, zarr

def status(field):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field))

open("/proc/self/clear_refs", "w").write("5")  # the peak (VmHWM) starts again from the current RSS
before = status("VmRSS:")
start = time.perf_counter()
array = read_volume(sys.argv[1], sys.argv[2])
seconds = time.perf_counter() - start
extra = status("VmHWM:") - before
print(json.dumps({"extra_kib": extra, "seconds": seconds, "bytes": array.nbytes, "sum": int(array.sum())}))
"""


def main() -> None:
    """Write the volume in every format, read the same box from each, print the table and JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="edge of the cubic volume in voxels (default 512)")
    parser.add_argument("--folder", type=Path, default=None, help="where to write the volumes (default: a temp dir)")
    args = parser.parse_args()
    folder = args.folder or Path(tempfile.mkdtemp(prefix="bench-sources-"))
    folder.mkdir(parents=True, exist_ok=True)
    n = args.size
    volume = np.random.default_rng(0).integers(0, 255, size=(n, n, n), dtype=np.uint8)
    box = f"{n // 4}:{n // 2},{n // 4}:{3 * n // 4},{n // 4}:{3 * n // 4}"  # 1/16 of the volume
    chunks = (64, 64, 64)
    np.savez(folder / "v.npz", image=volume)
    np.save(folder / "v.npy", volume)
    zarr.create_array(store=str(folder / "v.zarr"), data=volume, chunks=chunks, overwrite=True)
    with h5py.File(folder / "v.h5", "w") as handle:
        handle.create_dataset("raw", data=volume, chunks=chunks)
    layer = write_precomputed(folder / "layer", volume, chunk_xyz=chunks)
    sources = {"npz (whole read, peer)": f"file://{folder}/v.npz#image", "npy (memory-mapped)": f"file://{folder}/v.npy",
               "zarr": f"file://{folder}/v.zarr", "hdf5": f"file://{folder}/v.h5#raw", "precomputed": layer}
    print(f"volume {volume.shape} uint8 ({volume.nbytes / 2**20:.0f} MiB), box {box} "
          f"({volume.nbytes / 16 / 2**20:.0f} MiB, 1/16 of it)")
    print(f"{'format':<24}{'peak RSS / box':>16}{'MB/s':>10}")
    results, expected = {}, None
    for name, uri in sources.items():
        out = subprocess.run([sys.executable, "-c", READ, uri, box], capture_output=True, text=True, check=True)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        expected = expected if expected is not None else row["sum"]
        assert row["sum"] == expected, f"{name} read other data"
        ratio = row["extra_kib"] * 1024 / row["bytes"]
        speed = row["bytes"] / row["seconds"] / 1e6
        results[name.split()[0]] = {"peak_rss_over_box": round(ratio, 2), "mb_per_s": round(speed, 1)}
        print(f"{name:<24}{ratio:>16.2f}{speed:>10.1f}")
    print(json.dumps({"volume_over_box": 16, **results}))


if __name__ == "__main__":
    main()
