"""How far merging can take the blobs method: its F1 with an oracle that knows the true nuclei.

The blobs method over-seeds elongated nuclei (two peaks in one nucleus) and then merges touching
cells whose centroids are close (``neuropipe.ops._blobs.MERGE``).  Before trying another merge
rule, this says how much any rule could gain: the cells are found without merging, then every
cell is joined with the others whose voxels lie mostly in the same true nucleus (and a cell
lying mostly outside every nucleus is dropped).  What is left below 1 are nuclei that got no
seed of their own (a merge cannot create one) and misplaced centroids.  Printed per seed and expected size
(``sphere_size``): F1 without merging, with the
default rule and with the oracle, and the nuclei without a cell of their own; the means over the
seeds end the output as one JSON line, with the median size (voxels) and mean probability of the
nuclei of all seeds that have no cell of their own and of the others (which nuclei the seeding
misses).

    python bench/bench_merge_ceiling.py [--regime "elongated, irregular"] [--sizes 7 10] [--seeds 0 1 2 3]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

from neuropipe import ops
from neuropipe.ops import _blobs

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_detection import REGIMES  # noqa: E402


def majority_nucleus(cells, nuclei):
    """For each cell id 1..N of ``cells``, the true nucleus most of its voxels lie in (0 for none)."""
    inside = cells > 0
    pairs, counts = np.unique(np.stack([cells[inside], nuclei[inside]], axis=1), axis=0, return_counts=True)
    owner = np.zeros(int(cells.max()) + 1, np.int64)
    most = np.zeros(len(owner), np.int64)
    for (cell, nucleus), count in zip(pairs, counts):
        if count > most[cell]:
            owner[cell], most[cell] = nucleus, count
    return owner


def nucleus_sizes(sample, prob, owner):
    """Voxel count, mean ``prob`` and whether some cell lies mostly in it, per nucleus of ``sample``.

    ``owner`` is :func:`majority_nucleus` of the cells.
    """
    ids = np.arange(1, len(sample.centroids) + 1)
    voxels = np.bincount(sample.nuclei.ravel(), minlength=len(ids) + 1)[1:]
    return voxels, ndimage.mean(prob, sample.nuclei, ids), np.isin(ids, owner[1:])


def seeding_figures(voxels, mean_prob, seeded):
    """Median voxels and mean probability of the nuclei with a cell of their own and of the others."""
    return {f"{name}_{figure}": float(fn(values[where])) if where.any() else float("nan")
            for name, where in (("seeded", seeded), ("unseeded", ~seeded))
            for figure, fn, values in (("voxels", np.median, voxels), ("prob", np.mean, mean_prob))}


def f1_of(cells, sample):
    """F1 of the centroids of ``cells`` against the sample's nuclei (``match_centroids(radius=5)``)."""
    ids = np.unique(cells)[1:]
    centroids = np.asarray(ndimage.center_of_mass(np.ones(cells.shape), cells, ids), float).reshape(-1, 3)
    return ops.match_centroids(centroids, sample.centroids, radius=5).f1


def blobs(prob, sample, size, threshold, merge):
    """Cell labels of the blobs method at ``merge`` (the fraction of the diameter; 0 merges none)."""
    default, _blobs.MERGE = _blobs.MERGE, merge
    try:
        return _blobs.detect_blobs(prob, threshold, size, 100_000, 0, sample.voxel_size)[0]
    finally:
        _blobs.MERGE = default


def main() -> None:
    """Print, per seed and size, F1 without merging, with the default rule and with the oracle."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--regime", default="elongated, irregular", choices=list(REGIMES))
    parser.add_argument("--sizes", type=float, nargs="+", default=[7, 8, 10, 12])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--threshold", type=float, default=0.5)
    args = parser.parse_args()
    samples = [ops.make_nuclei(seed=seed, **REGIMES[args.regime]) for seed in args.seeds]
    maps = [ops.gmm_probability(sample.image, foreground="bright") for sample in samples]
    summary = {}
    for size in args.sizes:
        rows, figures = [], []
        for seed, sample, prob in zip(args.seeds, samples, maps):
            unmerged = blobs(prob, sample, size, args.threshold, 0.0)
            default = blobs(prob, sample, size, args.threshold, _blobs.MERGE)
            owner = majority_nucleus(unmerged, sample.nuclei)
            oracle = owner[unmerged]
            unseeded = len(sample.centroids) - np.count_nonzero(np.unique(owner[1:]))
            rows.append((f1_of(unmerged, sample), f1_of(default, sample), f1_of(oracle, sample), unseeded))
            figures.append(nucleus_sizes(sample, prob, owner))
            print(f"size {size:g} seed {seed}: no merging {rows[-1][0]:.3f}, default (MERGE {_blobs.MERGE}) "
                  f"{rows[-1][1]:.3f}, oracle {rows[-1][2]:.3f}; {unseeded} of {len(sample.centroids)} nuclei "
                  "without a cell of their own", flush=True)
        mean = np.mean(rows, axis=0)
        nuclei = seeding_figures(*(np.concatenate(column) for column in zip(*figures)))
        print(f"size {size:g} mean: no merging {mean[0]:.3f}, default {mean[1]:.3f}, oracle {mean[2]:.3f}, "
              f"{mean[3]:.1f} nuclei a volume without a cell of their own (median {nuclei['unseeded_voxels']:.0f} "
              f"voxels, mean probability {nuclei['unseeded_prob']:.2f}; the others {nuclei['seeded_voxels']:.0f} "
              f"and {nuclei['seeded_prob']:.2f})", flush=True)
        summary[f"{size:g}"] = dict(zip(("no_merging", "default", "oracle", "unseeded"), map(float, mean))) | nuclei
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
