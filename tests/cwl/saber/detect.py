"""Detect bright cells in a .npy volume: threshold the image scaled to [0, 1], keep large components."""

import argparse
import sys

import numpy as np
import scipy.ndimage


def main() -> None:
    """Parse the command line and run the tool."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("volume")
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--min-voxels", type=int, default=1)
    args = parser.parse_args()
    image = np.load(args.volume).astype(np.float64)
    if image.max() == image.min():
        sys.exit(f"detect: the volume {args.volume} is constant ({image.min()}): nothing to detect")
    scaled = (image - image.min()) / (image.max() - image.min())
    labels, count = scipy.ndimage.label(scaled > args.threshold)
    sizes = np.bincount(labels.ravel())
    kept = [label for label in range(1, count + 1) if sizes[label] >= args.min_voxels]
    centres = scipy.ndimage.center_of_mass(scaled, labels, kept) if kept else []
    np.savetxt("cells.csv", np.asarray(centres).reshape(-1, 3), delimiter=",", fmt="%.3f")
    print(f"found {len(kept)} cells above {args.threshold}")


if __name__ == "__main__":
    main()
