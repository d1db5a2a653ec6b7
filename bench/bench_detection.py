"""Cell detection: xbrain's greedy spheres against the distance-transform watershed.

The maintainers score detection on an annotated 3D nuclei volume that is not available
here, with ``gmm_probability -> detect_cells -> match_centroids(radius=5)`` and a small
parameter sweep.  This benchmark runs the same protocol on nuclei-like volumes made to
resemble it (packed, touching, border-cut and dim nuclei, blur and noise; ground truth
known), prints the best F1 of each method and its parameters, and times detection on a
128^3 probability map.

    python bench/bench_detection.py [--volumes 2]
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np
from scipy import ndimage

from neuropipe import ops


def nuclei_volume(seed: int, shape=(64, 128, 128), count=90, radius=(5.0, 8.0)):
    """Return (image uint8, centroids) of packed, partly touching bright nuclei."""
    rng = np.random.default_rng(seed)
    centres, radii = [], []
    while len(centres) < count:
        centre, r = rng.uniform(0, shape), rng.uniform(*radius)
        if all(np.linalg.norm(centre - c) > 0.85 * (r + q) for c, q in zip(centres, radii)):
            centres.append(centre)
            radii.append(r)
    grid = np.indices(shape).reshape(3, -1).T
    labels = np.zeros(int(np.prod(shape)), np.int32)
    brightness = np.zeros(len(centres))
    for index, (centre, r) in enumerate(zip(centres, radii), start=1):
        inside = np.linalg.norm(grid - centre, axis=1) <= r
        labels[inside & (labels == 0)] = index
        brightness[index - 1] = rng.uniform(0.45, 1.0)  # some nuclei are dim
    labels = labels.reshape(shape)
    image = np.where(labels > 0, np.concatenate([[0], brightness])[labels], 0.0) * 160 + 40
    image = ndimage.gaussian_filter(image, 1.2) + rng.normal(0, 12, shape)
    truth = ops.label_components(labels, connectivity=6).centroids  # visible parts, as annotators mark them
    return np.clip(image, 0, 255).astype(np.uint8), truth


SWEEPS = {
    "spheres": [dict(method="spheres", threshold=t, stop=s, sphere_size=d, dilation=g)
                for t, s, d, g in itertools.product((0.2, 0.4), (0.47, 0.55), (10, 13, 16), (4, 8))],
    "distance": [dict(method="distance", threshold=t, sphere_size=d, min_voxels=20, max_cells=2000)
                 for t, d in itertools.product((0.3, 0.5, 0.7), (10, 13, 16))],
}


def main() -> None:
    """Sweep each method on each volume; print the best mean F1 and the 128^3 timing."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--volumes", type=int, default=2)
    args = parser.parse_args()
    volumes = [nuclei_volume(seed) for seed in range(args.volumes)]
    maps = [(ops.gmm_probability(image, foreground="bright"), truth) for image, truth in volumes]
    cube = ops.gmm_probability(nuclei_volume(99, shape=(128, 128, 128), count=180)[0], foreground="bright")
    for method, sweep in SWEEPS.items():
        scored = []
        for params in sweep:
            f1 = [ops.match_centroids(ops.detect_cells(p, **params).centroids, truth, radius=5).f1 for p, truth in maps]
            scored.append((float(np.mean(f1)), params))
        best, params = max(scored, key=lambda item: item[0])
        start = time.perf_counter()
        ops.detect_cells(cube, **params)
        seconds = time.perf_counter() - start
        print(f"{method:<9} best mean F1 {best:.3f} over {len(maps)} volumes with {params}; "
              f"{seconds:.2f} s on a 128^3 map")


if __name__ == "__main__":
    main()
