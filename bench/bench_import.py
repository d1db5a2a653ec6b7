"""Peak memory of importing a volume into the store as chunked zarr, against reading it whole.

``Volume.make`` copies a volume larger than ``neuropipe.zarr_above_mb`` from its source into a
zarr array block by block (:func:`neuropipe.io.stored.copy_in_blocks`).  This runs the same
calls on a zarr source (the peer: ``read_volume`` of the whole box and one ``.npy`` written,
what the import of a small volume does) in fresh processes and reports each one's peak RSS
above what it held before (Linux: ``/proc/self/clear_refs``).  Run by hand:

    python bench/bench_import.py [--depth 128] [--size 2048] [--folder /tmp/bench-import]

The last line is one JSON object: peak extra memory / volume bytes and MB/s for both.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import zarr

RUN = """
import json, sys, time
import fsspec, numpy as np
from neuropipe.io import open_source, read_volume, stored
from neuropipe.io.sources import box_slices, read_part

def status(field):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field))

source, target, how = sys.argv[1:4]
opened = open_source(source)
open("/proc/self/clear_refs", "w").write("5")
before = status("VmRSS:")
start = time.perf_counter()
if how == "blocks":
    box = box_slices(opened, None)
    array = stored.create_zarr(fsspec.FSMap(target, fsspec.filesystem("file"), create=True), opened.shape, opened.dtype)
    stored.copy_in_blocks(lambda part: read_part(opened, part), opened.shape, array)
else:  # what an import of a small volume does: read it whole, then DataJoint writes one .npy
    image = read_volume(source)
    stored.statistics(image)
    np.save(target + ".npy", image)
seconds = time.perf_counter() - start
print(json.dumps({"peak_kb": status("VmHWM:") - before, "seconds": seconds}))
"""


def main() -> None:
    """Write a zarr source, import it both ways in fresh processes, print the table and the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=128, help="z planes (default 128)")
    parser.add_argument("--size", type=int, default=2048, help="x and y extent (default 2048)")
    parser.add_argument("--folder", type=Path, default=None, help="where to write (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.folder or Path(scratch)
        shape = (args.depth, args.size, args.size)
        source = zarr.create_array(store=str(folder / "source.zarr"), shape=shape, chunks=(32, 256, 256), dtype="uint8")
        rng = np.random.default_rng(0)
        for z in range(0, args.depth, 32):
            source[z:z + 32] = rng.integers(0, 255, size=(min(32, args.depth - z), *shape[1:]), dtype=np.uint8)
        megabytes = np.prod(shape) / 1e6
        results = {}
        for how in ("whole", "blocks"):
            target = str(folder / f"target-{how}.zarr")
            output = subprocess.run([sys.executable, "-c", RUN, f"file://{folder}/source.zarr", target, how],
                                    check=True, capture_output=True, text=True).stdout.splitlines()[-1]
            run = json.loads(output)
            results[how] = {"peak_rss_over_volume": round(run["peak_kb"] * 1024 / (megabytes * 1e6), 3),
                            "mb_per_s": round(megabytes / run["seconds"], 1)}
    print(f"volume {shape} uint8 ({megabytes:.0f} MB) from zarr")
    print(f"{'import':<10}{'peak RSS / volume':>20}{'MB/s':>10}")
    for how, row in results.items():
        print(f"{how:<10}{row['peak_rss_over_volume']:>20.3f}{row['mb_per_s']:>10.1f}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
