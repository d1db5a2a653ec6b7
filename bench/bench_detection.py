"""Cell detection: xbrain's greedy spheres, multi-scale blobs and the learned option, on synthetic nuclei.

The maintainers score detection on an annotated 3D nuclei volume that is not available
here, with ``gmm_probability -> detect_cells -> match_centroids(radius=5)`` and a small
parameter sweep.  This benchmark runs the same protocol on volumes from
:func:`neuropipe.ops.make_nuclei` (packed, touching, border-cut and dim nuclei, blur, an
illumination gradient and noise; ground truth known) in several regimes, prints each
method's best mean F1 with the per-regime figures and its parameters, the F1 of the
greedy method on the perfect probability map (what no map can improve), and times
detection on a 128^3 probability map.

The unsupervised methods run on the GMM map of the scored volume.  The learned method
(``train_nuclei`` -> ``predict_nuclei`` -> ``detect_cells(method='learned')``) is trained, per
regime, on another volume of that regime (seed 10, twice as tall, its annotated nuclei), never on
the scored one.

    python bench/bench_detection.py [--seeds 0 1] [--learned-iterations 2000]
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np

from neuropipe import ops

REGIMES = {
    "packed": dict(shape=(48, 96, 96), packing=0.8),
    "dense": dict(shape=(48, 96, 96), packing=0.7, density=0.4),
    "mixed sizes": dict(shape=(48, 96, 96), packing=0.8, radius=(3.0, 10.0)),
    "small volume": dict(shape=(32, 56, 64), packing=0.75, radius=(3.0, 9.0)),
    "anisotropic": dict(shape=(24, 96, 96), packing=0.8, voxel_size=(2.0, 1.0, 1.0)),
    "elongated, irregular": dict(shape=(48, 96, 96), packing=0.8, elongation=2.0, irregularity=0.2),
    "chromatin, photon noise": dict(shape=(48, 96, 96), packing=0.8, chromatin=0.4, photons=20, dim=0.25),
    "fluorescence (all at once)": dict(shape=(32, 96, 96), packing=0.75, radius=(4.0, 8.0), voxel_size=(2.0, 1.0, 1.0),
                                       elongation=1.8, irregularity=0.15, chromatin=0.35, photons=30, dim=0.3),
}

SWEEPS = {
    "spheres": [dict(method="spheres", threshold=t, stop=s, sphere_size=d, dilation=g)
                for t, s, d, g in itertools.product((0.2, 0.4), (0.4, 0.47, 0.55), (8, 10, 12, 14), (2, 4, 8))],
    "blobs": [dict(method="blobs", threshold=t, sphere_size=d)
              for t, d in itertools.product((0.5, 0.7, 0.85), (8, 10, 12, 14))],
    "learned": [dict(method="learned", threshold=t, stop=s, sphere_size=d)
                for t, s, d in itertools.product((0.3, 0.5), (0.2, 0.3, 0.45, 0.6), (8, 10, 12, 14))],
}


def f1_by_regime(volumes, params):
    """F1 of ``detect_cells(**maps, **params)`` on each (regime, sample, maps), averaged per regime."""
    scores = {}
    for regime, sample, maps in volumes:
        found = ops.detect_cells(**maps, voxel_size=sample.voxel_size, **params)
        scores.setdefault(regime, []).append(ops.match_centroids(found.centroids, sample.centroids, radius=5).f1)
    return {regime: float(np.mean(values)) for regime, values in scores.items()}


def main() -> None:
    """Sweep each method over every regime; print the best mean F1, the perfect-map peer and timings."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--regimes", nargs="+", default=list(REGIMES), help="a subset of the regimes")
    parser.add_argument("--methods", nargs="+", default=list(SWEEPS), help="a subset of the methods")
    parser.add_argument("--learned-iterations", type=int, default=2000, help="training steps per regime")
    args = parser.parse_args()
    volumes, learned = [], []
    for regime, options in ((name, REGIMES[name]) for name in args.regimes):
        model = train_on_regime(options, args.learned_iterations) if "learned" in args.methods else None
        for seed in args.seeds:
            sample = ops.make_nuclei(seed=seed, **options)
            volumes.append((regime, sample, {"prob": ops.gmm_probability(sample.image, foreground="bright")}))
            if model is not None:
                maps = ops.predict_nuclei(model, sample.image)
                learned.append((regime, sample, {"prob": maps.foreground, "centres": maps.centres}))
    perfect = [(regime, sample, {"prob": (sample.nuclei > 0).astype(float)}) for regime, sample, _ in volumes]
    best_perfect = max((f1_by_regime(perfect, params) for params in SWEEPS["spheres"]),
                       key=lambda scores: np.mean(list(scores.values())))
    print("spheres on the perfect map (ceiling of the greedy method): mean F1 "
          f"{np.mean(list(best_perfect.values())):.3f}; " + ", ".join(f"{k} {v:.3f}" for k, v in best_perfect.items()))
    cube = ops.make_nuclei((128, 128, 128), seed=99)
    cube_map = ops.gmm_probability(cube.image, foreground="bright")
    for method, sweep in ((name, SWEEPS[name]) for name in args.methods):
        start = time.perf_counter()
        scored = [(f1_by_regime(learned if method == "learned" else volumes, params), params) for params in sweep]
        swept = time.perf_counter() - start
        regimes, params = max(scored, key=lambda item: np.mean(list(item[0].values())))
        start = time.perf_counter()
        if method == "learned":  # the map is the model's: predicting it is part of the cost
            maps = ops.predict_nuclei(model, cube.image)
            cube_inputs = {"prob": maps.foreground, "centres": maps.centres}
        else:
            cube_inputs = {"prob": cube_map}
        found = ops.detect_cells(**cube_inputs, **{**params, "max_cells": 5000})
        seconds = time.perf_counter() - start
        cube_f1 = ops.match_centroids(found.centroids, cube.centroids, radius=5).f1
        print(f"{method:<8} best mean F1 {np.mean(list(regimes.values())):.3f} ("
              + ", ".join(f"{k} {v:.3f}" for k, v in regimes.items())
              + f") with {params}; sweep of {len(sweep)} in {swept:.0f} s; "
              f"128^3 map: {seconds:.2f} s, F1 {cube_f1:.3f}", flush=True)


def train_on_regime(options, iterations):
    """Train the learned method on a volume of the regime that is never scored (seed 10, twice as tall)."""
    start = time.perf_counter()
    depth, height, width = options["shape"]
    sample = ops.make_nuclei(seed=10, **{**options, "shape": (depth, 2 * height, width)})
    model = ops.train_nuclei(sample.image, sample.nuclei, voxel_size=sample.voxel_size, iterations=iterations,
                             progress=False)
    print(f"  learned: trained {iterations} steps in {time.perf_counter() - start:.0f} s", flush=True)
    return model


if __name__ == "__main__":
    main()
