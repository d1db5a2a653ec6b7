"""Pull a cutout of a Boss channel through intern and save it as a ZYX .npy file (a SABER-style tool)."""

import argparse

import numpy as np
from intern.remote.boss import BossRemote


def bounds(text: str) -> list[int]:
    """Return [start, stop] of a "start:stop" range."""
    start, stop = (int(part) for part in text.split(":"))
    return [start, stop]


def main() -> None:
    """Parse the command line and run the tool."""
    parser = argparse.ArgumentParser(description=__doc__)
    for name in ("host", "protocol", "token", "collection", "experiment", "channel", "x", "y", "z", "output"):
        parser.add_argument(f"--{name}", required=True)
    parser.add_argument("--resolution", type=int, default=0)
    args = parser.parse_args()
    remote = BossRemote({"protocol": args.protocol, "host": args.host, "token": args.token})
    channel = remote.get_channel(args.channel, args.collection, args.experiment)
    cutout = remote.get_cutout(channel, args.resolution, bounds(args.x), bounds(args.y), bounds(args.z))
    np.save(args.output, np.asarray(cutout))
    print(f"pulled {cutout.shape} {cutout.dtype} from {args.collection}/{args.experiment}/{args.channel}")


if __name__ == "__main__":
    main()
