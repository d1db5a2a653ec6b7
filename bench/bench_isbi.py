"""Membrane U-Net on ISBI 2012: train on slices 0-19, score slices 20-29.

Prints, per time budget and seed: held-out pixel error, membrane F1 and adapted Rand error
(of the cells the map separates, plane by plane), training iterations, and the peer: the
best raw-intensity threshold on the same slices.  The U-Net paper reports pixel error 0.0611
on the (different) ISBI test set.

    python bench/bench_isbi.py --minutes 10 --seeds 0 1 2 [--width 16 --depth 3 ...]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from neuropipe import ops

_ISBI = Path("data") / "isbi2012" / "isbi2012_train.npz"
_BESIDE = Path(__file__).resolve().parents[2] / "shared"  # ../shared beside the checkout
_INSIDE = Path(__file__).resolve().parents[1] / "shared"  # where it travels to a lent GPU machine (gpu_run.sh)
DATA = next((folder for folder in (_BESIDE, _INSIDE) if (folder / _ISBI).is_file()), _BESIDE) / _ISBI


def raw_threshold_error(image: np.ndarray, membrane: np.ndarray) -> float:
    """Return the best pixel error of 'dark = membrane' over all intensity thresholds."""
    return min(float(np.mean((image < t) != membrane)) for t in range(0, 256, 2))


def score(probability: np.ndarray, membrane: np.ndarray) -> dict:
    """Pixel error, F1 and adapted Rand error of a membrane probability map."""
    pixels = ops.pixel_scores(probability, membrane)
    voxel = (50, 4, 4)
    segments = ops.label_components(probability <= 0.5, connectivity=6, voxel_size=voxel).labels
    truth = ops.label_components(~membrane, connectivity=6, voxel_size=voxel).labels
    return {"pixel_error": pixels.pixel_error, "f1": pixels.f1, "rand": ops.adapted_rand_error(segments, truth)}


def main() -> None:
    """Train and score once per seed; print a table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--options", default="{}", help="further train_membrane keywords, as a Python dict")
    args = parser.parse_args()
    data = np.load(DATA)
    image, membrane = data["image"], data["membrane"]
    train, test = slice(0, 20), slice(20, 30)
    peer = raw_threshold_error(image[test], membrane[test])
    print(f"raw intensity threshold (peer): held-out pixel error {peer:.4f}")
    options = eval(args.options)  # noqa: S307 - a benchmark's own command line
    for seed in args.seeds:
        start = time.perf_counter()
        model = ops.train_membrane(image[train], membrane[train], minutes=args.minutes, seed=seed, progress=False,
                                   **options)
        trained = time.perf_counter() - start
        for augment in (False, True):
            start = time.perf_counter()
            probability = ops.predict_membrane(model, image[test], augment=augment)
            predicted = time.perf_counter() - start
            result = score(probability, membrane[test])
            print(f"seed {seed} {args.minutes:g} min {options} augment={augment}: pixel error "
                  f"{result['pixel_error']:.4f}  F1 {result['f1']:.3f}  adapted Rand {result['rand']:.4f}  "
                  f"({model.iterations} iterations, train {trained:.0f} s, predict {predicted:.1f} s)", flush=True)
        errors = " ".join(f"{error:.4f}" for error in model.hyperparameters.get("validation_errors", []))
        print(f"  validation pixel error per checkpoint: {errors or '-'}; final loss {model.final_loss:.4f}")


if __name__ == "__main__":
    main()
