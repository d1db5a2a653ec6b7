"""BossDB channels through intern, read as sources and written as export targets.

A channel is named ``bossdb://collection/experiment/channel[?resolution=N]``; the library is
intern, the Boss's own client, imported inside the functions that need it.

The server and token come from neuropipe's settings (``boss.host``, ``boss.protocol``,
``boss.token`` in ``dj_local_conf.json``, or ``NEUROPIPE_BOSS_*``), else from intern's own
configuration.  The token is never written to a log, an error or a job row.

A box is fetched in blocks aligned to the Boss cuboids (512 x 512 x 16 voxels, XYZ), several
at a time in threads (intern's own parallel download forks processes, which a worker holding
a database connection must not do), each block retried with backoff on transient network
errors (a dropped connection, HTTP 5xx or 429); long pulls log their progress.  The Boss
indexes X, Y, Z; ``get_cutout`` returns ZYX, which is what neuropipe presents.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from itertools import product

import numpy as np

from neuropipe.config import load_settings
from neuropipe.errors import BadInputError, TransientError, backoff_seconds
from neuropipe.io.bbox import check_inside
from neuropipe.io.contents import CREATED_DTYPES, Written, fit_dtype
from neuropipe.io.uri import Source, Target
from neuropipe.io.volume import OpenVolume, Slices, to_nm

logger = logging.getLogger(__name__)

BLOCK_ZYX = (16, 512, 512)
THREADS = 4
ATTEMPTS = 4
_UNITS = {"nanometers": "nanometer", "micrometers": "micrometer", "millimeters": "millimeter",
          "centimeters": "centimeter"}


def boss_remote():
    """Return an intern ``BossRemote`` for the configured server (intern's own configuration otherwise)."""
    from intern.remote.boss import BossRemote

    settings = load_settings()
    if not settings.boss_host:
        try:
            return BossRemote()
        except Exception as error:
            raise BadInputError("bossdb:// sources need a Boss server: set boss.host and boss.token in "
                                "dj_local_conf.json (or NEUROPIPE_BOSS_HOST, NEUROPIPE_BOSS_TOKEN), or configure "
                                f"intern (~/.intern/intern.cfg). intern said: {error.__class__.__name__}") from None
    return BossRemote({"protocol": settings.boss_protocol, "host": settings.boss_host,
                       "token": settings.boss_token or "public"})


def open_boss(source: Source, remote=None) -> OpenVolume:
    """Open a Boss channel at the source's resolution: extent, dtype, voxel size, block reader.

    Parameters
    ----------
    source : Source
        A parsed ``bossdb`` source (:func:`neuropipe.io.uri.parse_source`).
    remote : intern BossRemote, optional
        Default: :func:`boss_remote`.

    Returns
    -------
    OpenVolume
        In the coordinate frame's voxels at that resolution (its ``origin`` is the frame's start).

    Raises
    ------
    BadInputError
        For a channel that does not exist, refused access, or a resolution the experiment lacks.
    TransientError
        When the server cannot be reached or fails.
    """
    parts = source.path.parts
    collection, experiment_name, channel_name = parts
    remote = remote or boss_remote()
    with _named_errors(source.uri, remote):
        channel = remote.get_channel(channel_name, collection, experiment_name)
        experiment = remote.get_experiment(collection, experiment_name)
        frame = remote.get_coordinate_frame(experiment.coord_frame)
    resolution = source.resolution or 0
    levels = int(experiment.num_hierarchy_levels or 1)
    if resolution >= levels:
        raise BadInputError(f"source {source.uri!r}: resolution {resolution} does not exist; the experiment has "
                            f"levels 0-{levels - 1}.")
    isotropic = str(experiment.hierarchy_method).lower().startswith("iso")
    factors = (2 ** resolution if isotropic else 1, 2 ** resolution, 2 ** resolution)  # ZYX
    starts, stops = _frame(frame)
    origin = tuple(int(start) // factor for start, factor in zip(starts, factors))
    shape = tuple(-(-int(stop) // factor) - first for stop, factor, first in zip(stops, factors, origin))
    sizes = (frame.z_voxel_size, frame.y_voxel_size, frame.x_voxel_size)
    voxel = to_nm([size * factor for size, factor in zip(sizes, factors)],
                  _UNITS.get(str(frame.voxel_unit).lower(), frame.voxel_unit), source.uri)

    def read(slices: Slices) -> np.ndarray:
        box = [(first + piece.start, first + piece.stop) for first, piece in zip(origin, slices)]
        return read_cutout(remote, channel, resolution, box, uri=source.uri)

    return OpenVolume(source.uri, shape, np.dtype(channel.datatype), read, origin=origin, voxel_size_nm=voxel)


def read_cutout(remote, channel, resolution: int, box, *, uri: str, block=None, threads: int | None = None):
    """Fetch the ZYX ``box`` ((start, stop) per axis, Boss coordinates) block by block, in parallel.

    ``block`` (ZYX) and ``threads`` default to :data:`BLOCK_ZYX` and :data:`THREADS`.

    Returns
    -------
    ndarray
        ZYX, the channel's dtype.

    Raises
    ------
    BadInputError
        For answers that another try would not change (400, 403, 404).
    TransientError
        When a block still fails after :data:`ATTEMPTS` tries (the worker retries the job).
    """
    out = np.empty(tuple(stop - start for start, stop in box), dtype=np.dtype(channel.datatype))

    def fetch(piece):
        (z0, z1), (y0, y1), (x0, x1) = piece
        data = _with_retries(lambda: remote.get_cutout(channel, resolution, [x0, x1], [y0, y1], [z0, z1],
                                                       parallel=False), uri, remote)
        out[_inside(piece, box)] = data

    _in_parallel(fetch, _blocks(box, block or BLOCK_ZYX), threads, uri, out.nbytes, "pulled")
    return out


def write_boss(target: Target, array: np.ndarray, *, content: str, offset_zyx, create: bool, sources=(), remote=None):
    """Write a ZYX probability map or label volume into a Boss channel at ``offset_zyx`` (resolution 0).

    A missing channel is created where ``create`` is set: a uint8 image channel for
    probabilities, a uint64 annotation channel (over the image channels ``sources``) for labels.
    The collection and experiment must exist.  See :func:`neuropipe.io.targets.write_volume`.

    Raises
    ------
    BadInputError
        For a missing channel (and ``create`` not set), refused access, a box outside the
        coordinate frame, or values the channel's dtype cannot hold.
    TransientError
        When the server cannot be reached or keeps failing.
    """
    collection, experiment_name, channel_name = target.path.parts
    remote = remote or boss_remote()
    with _named_errors(target.uri, remote):
        experiment = remote.get_experiment(collection, experiment_name)
        frame = remote.get_coordinate_frame(experiment.coord_frame)
        channel = _channel(remote, collection, experiment_name, channel_name)
        if channel is None and not create:
            raise BadInputError(f"target {target.uri!r}: no such channel (set create to make one).")
        if channel is None:
            channel = _create_channel(remote, collection, experiment_name, channel_name,
                                      CREATED_DTYPES[content]["bossdb"], list(sources))
    starts, stops = _frame(frame)
    extent = tuple(stop - start for start, stop in zip(starts, stops))
    box = tuple((int(first), int(first) + size) for first, size in zip(offset_zyx, array.shape))
    check_inside(box, extent, what=f"coordinate frame of {target.uri}", origin=starts)
    data = fit_dtype(array, content, channel.datatype, target.uri)
    write_cutout(remote, channel, box, data, uri=target.uri)
    return Written(target.uri, data.dtype.name, data.nbytes)


def write_cutout(remote, channel, box, data: np.ndarray, *, uri: str, block=None, threads: int | None = None):
    """Push ZYX ``data`` into ``box`` of a channel at resolution 0, block by block, in parallel.

    An all-zero block is sent as ``cutout/to_black``: intern's ``create_cutout`` silently skips
    all-zero arrays, which would leave old values where the new ones are zero.
    """
    def push(piece):
        part = np.ascontiguousarray(data[_inside(piece, box)])
        (z0, z1), (y0, y1), (x0, x1) = piece
        if part.any():
            call = lambda: remote.create_cutout(channel, 0, [x0, x1], [y0, y1], [z0, z1], part)  # noqa: E731
        else:
            call = lambda: remote.create_cutout_to_black(channel, 0, [x0, x1], [y0, y1], [z0, z1])  # noqa: E731
        _with_retries(call, uri, remote)

    _in_parallel(push, _blocks(box, block or BLOCK_ZYX), threads, uri, data.nbytes, "pushed")


def _frame(frame) -> tuple[tuple, tuple]:
    """Return the ZYX start and stop of a coordinate frame (the Boss gives them per axis)."""
    return (frame.z_start, frame.y_start, frame.x_start), (frame.z_stop, frame.y_stop, frame.x_stop)


def _status(error: Exception):
    """Return the HTTP status of an intern or requests error, None where there was no answer."""
    return getattr(getattr(error, "response", None), "status_code", None)


def _channel(remote, collection: str, experiment: str, name: str):
    """Return the channel, or None where the Boss answers 404 (other errors propagate)."""
    try:
        return remote.get_channel(name, collection, experiment)
    except Exception as error:
        if _status(error) == 404:
            return None
        raise


def _create_channel(remote, collection: str, experiment: str, name: str, datatype: str, sources: list):
    """Create a channel: an annotation channel over ``sources`` for uint64, an image channel otherwise."""
    from intern.resource.boss.resource import ChannelResource

    kind = "annotation" if datatype == "uint64" else "image"
    logger.info("creating Boss channel %s/%s/%s (%s %s)", collection, experiment, name, kind, datatype)
    return remote.create_project(ChannelResource(name, collection, experiment, type=kind, datatype=datatype,
                                                 sources=sources if kind == "annotation" else []))


def _inside(piece, box) -> tuple:
    """Return the slices of a block ``piece`` within the array that covers ``box``."""
    return tuple(slice(start - first, stop - first) for (start, stop), (first, _) in zip(piece, box))


def _in_parallel(transfer, blocks: list, threads: int | None, uri: str, nbytes: int, verb: str) -> None:
    """Run ``transfer(block)`` for every block in threads, logging progress on long transfers."""
    done, step, start = 0, max(1, len(blocks) // 10), time.monotonic()
    with ThreadPoolExecutor(max_workers=max(1, min(threads or THREADS, len(blocks)))) as pool:
        for _ in pool.map(transfer, blocks):
            done += 1
            if len(blocks) >= 10 and done % step == 0:
                logger.info("%s: %s %d of %d blocks (%.0f MB in %.1f s)", uri, verb, done, len(blocks),
                            nbytes * done / len(blocks) / 1e6, time.monotonic() - start)


def _blocks(box, block) -> list:
    """Split a ZYX box into pieces aligned to the ``block`` grid."""
    edges = []
    for (start, stop), size in zip(box, block):
        cuts = [start] + list(range((start // size + 1) * size, stop, size)) + [stop]
        edges.append(list(zip(cuts[:-1], cuts[1:])))
    return list(product(*edges))


def _with_retries(call, uri: str, remote):
    """Return ``call()``, tried again with backoff on transient failures up to :data:`ATTEMPTS` times."""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return call()
        except Exception as error:
            status = _status(error)
            transient = status is None or status >= 500 or status == 429
            if not transient:
                raise _described(uri, error, status, remote) from None
            if attempt == ATTEMPTS:
                raise TransientError(f"source {uri!r}: the Boss server failed {ATTEMPTS} times in a row: "
                                     f"{_scrub(error, remote)}") from None
            wait = backoff_seconds(attempt, base=0.5, cap=10.0)
            logger.warning("%s: block failed (%s); try %d of %d in %.1f s", uri, _scrub(error, remote), attempt + 1,
                           ATTEMPTS, wait)
            time.sleep(wait)


@contextmanager
def _named_errors(uri: str, remote):
    """Turn intern's errors on metadata calls into errors that name the problem."""
    try:
        yield
    except BadInputError:
        raise
    except Exception as error:
        status = _status(error)
        if status is None:
            raise TransientError(f"source {uri!r}: cannot reach the Boss server: {_scrub(error, remote)}") from None
        raise _described(uri, error, status, remote) from None


def _described(uri: str, error: Exception, status, remote) -> Exception:
    """Return the error to raise for an answer of HTTP ``status``: what went wrong, without the token."""
    if status == 404:
        return BadInputError(f"source {uri!r}: no such collection, experiment or channel on the Boss server (404).")
    if status in (401, 403):
        return BadInputError(f"source {uri!r}: the Boss server refused access ({status}); check boss.token "
                             "(NEUROPIPE_BOSS_TOKEN) and the channel's permissions.")
    if status is not None and status >= 500:
        return TransientError(f"source {uri!r}: the Boss server failed ({status}): {_scrub(error, remote)}")
    return BadInputError(f"source {uri!r}: the Boss server answered {status}: {_scrub(error, remote)}")


def _scrub(error: Exception, remote) -> str:
    """Describe ``error`` on one line without the token."""
    text = " ".join(f"{error.__class__.__name__}: {error}".split())
    token = getattr(remote, "_token_volume", None) or getattr(remote, "_token_project", None)
    return text.replace(token, "***") if token else text
