"""Score detected centroids against annotated ones: one-to-one matches within a radius, printed as F1."""

import argparse

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist


def main() -> None:
    """Parse the command line and run the tool."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("cells")
    parser.add_argument("annotation")
    parser.add_argument("--radius", type=float, default=4.0)
    args = parser.parse_args()
    found = np.loadtxt(args.cells, delimiter=",", ndmin=2).reshape(-1, 3)
    truth = np.loadtxt(args.annotation, delimiter=",", ndmin=2).reshape(-1, 3)
    matches = 0
    if len(found) and len(truth):
        distance = cdist(found, truth)
        rows, cols = linear_sum_assignment(distance)
        matches = int((distance[rows, cols] <= args.radius).sum())
    precision = matches / len(found) if len(found) else 0.0
    recall = matches / len(truth) if len(truth) else 0.0
    f1 = 2 * precision * recall / (precision + recall) if matches else 0.0
    print(f"matched {matches} of {len(found)} detected and {len(truth)} annotated cells")
    print(f"F1: {f1:.4f}")


if __name__ == "__main__":
    main()
