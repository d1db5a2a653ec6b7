"""Volume sources: URIs that name an array where the data already lies.

=====================================================  ==========================================
URI                                                    what
=====================================================  ==========================================
``file:///data/stack.npy`` (or a plain path)           memory-mapped; a box reads only its part
``file:///data/stack.npz#image``, ``.tif``             read whole
``file:///data/vol.zarr``, ``...zarr#group/array``     zarr v2 or v3 array (a group's by ``#path``)
``file:///data/img.ome.zarr?resolution=1``             an OME-Zarr multiscale level (0: finest)
``file:///data/sample.h5#volumes/raw``                 HDF5 dataset (``.h5``, ``.hdf5``, ``.hdf``)
``precomputed://file:///data/layer?resolution=1``      Neuroglancer precomputed scale (XYZ on disk);
                                                       also ``gs://`` and ``s3://`` layers
``bossdb://collection/experiment/channel``             a BossDB channel through intern
                                                       (``?resolution=N``; see :mod:`.boss`)
=====================================================  ==========================================

Every source is presented in ZYX order whatever its order on disk, a 2D image as one plane.
Chunked sources (zarr, HDF5, precomputed) read only the chunks the bounding box touches, and
report their voxel size where their metadata has one (:func:`voxel_size`).  Bounding boxes
are in the source's voxel coordinates (a precomputed layer's start at its ``voxel_offset``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np

from neuropipe.errors import BadInputError, TransientError
from neuropipe.io.bbox import check_inside, parse_bbox
from neuropipe.io.volume import OpenVolume

SUPPORTED_SUFFIXES = (".npy", ".npz", ".tif", ".tiff", ".zarr", ".h5", ".hdf5", ".hdf")
_FORMATS = {".npy": "npy", ".npz": "npz", ".tif": "tif", ".tiff": "tif", ".zarr": "zarr", ".h5": "hdf5",
            ".hdf5": "hdf5", ".hdf": "hdf5"}
_PRECOMPUTED = "precomputed://"
_PRECOMPUTED_STORES = ("file", "gs", "s3", "http", "https")


@dataclass(frozen=True)
class Source:
    """A parsed source URI.

    Attributes
    ----------
    uri : str
    format : {'npy', 'npz', 'tif', 'zarr', 'hdf5', 'precomputed', 'bossdb'}
    path : Path
        The local file or directory (for a remote precomputed layer, its path part; for a
        Boss channel, ``collection/experiment/channel``).
    inner : str or None
        After ``#``: the array of an ``.npz``, the array path in a zarr group, the HDF5 dataset.
    resolution : int or None
        ``?resolution=N``: the level of a multiscale source (0: finest).
    location : str
        Where the data lies as a URL (``file:///abs/path``, ``gs://bucket/layer``,
        ``bossdb://coll/exp/chan``).
    """

    uri: str
    format: str
    path: Path
    inner: str | None = None
    resolution: int | None = None
    location: str = ""


def parse_source(uri: str) -> Source:
    """Parse and check the syntax of a source URI (nothing is opened).

    Parameters
    ----------
    uri : str
        See the module's table.

    Returns
    -------
    Source

    Raises
    ------
    BadInputError
        For an unsupported scheme or file suffix, an empty path, or a bad query.
    """
    if not isinstance(uri, str) or not uri.strip():
        raise BadInputError(f"source must be a non-empty URI string, got {uri!r}.")
    text = uri.strip()
    if text.startswith(_PRECOMPUTED):
        return _parse_precomputed(uri, text[len(_PRECOMPUTED):])
    parts = urlsplit(text)
    if parts.scheme == "bossdb":
        return _parse_boss(uri, parts)
    if parts.scheme not in ("", "file"):
        raise BadInputError(
            f"source {uri!r} has the unsupported scheme {parts.scheme!r}; use file:// (with a file ending in "
            f"{', '.join(SUPPORTED_SUFFIXES)}), precomputed:// or bossdb://."
        )
    raw_path = parts.netloc + parts.path if parts.scheme else parts.path
    if not raw_path:
        raise BadInputError(f"source {uri!r} names no file.")
    path = Path(unquote(raw_path)).expanduser()
    suffix = path.suffix.lower()
    if suffix not in _FORMATS:
        raise BadInputError(
            f"source {uri!r}: files ending in {suffix or '(no suffix)'!r} are not supported; "
            f"use one of {', '.join(SUPPORTED_SUFFIXES)}."
        )
    return Source(uri=uri, format=_FORMATS[suffix], path=path, inner=parts.fragment or None,
                  resolution=_resolution(uri, parts.query), location=path.absolute().as_uri())


def _parse_precomputed(uri: str, rest: str) -> Source:
    parts = urlsplit(rest)
    if parts.scheme not in _PRECOMPUTED_STORES:
        raise BadInputError(f"source {uri!r}: a precomputed layer lies at a file://, gs://, s3:// or https:// URL, "
                            f"not {parts.scheme or 'a bare path'!r}.")
    if parts.fragment:
        raise BadInputError(f"source {uri!r}: precomputed layers take no '#' part.")
    if parts.scheme == "file":
        path = Path(unquote(parts.netloc + parts.path)).expanduser().absolute()
        location = path.as_uri() + "/"
    else:
        path = Path(parts.path)
        location = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}/"
    if not parts.path.strip("/") and not parts.netloc:
        raise BadInputError(f"source {uri!r} names no layer.")
    return Source(uri=uri, format="precomputed", path=path, resolution=_resolution(uri, parts.query),
                  location=location)


def _parse_boss(uri: str, parts) -> Source:
    names = [parts.netloc, *parts.path.strip("/").split("/")] if parts.path.strip("/") else [parts.netloc]
    if len(names) != 3 or not all(names):
        raise BadInputError(f"source {uri!r}: a Boss channel is bossdb://collection/experiment/channel.")
    if parts.fragment:
        raise BadInputError(f"source {uri!r}: Boss channels take no '#' part.")
    return Source(uri=uri, format="bossdb", path=Path(*names), resolution=_resolution(uri, parts.query),
                  location="bossdb://" + "/".join(names))


def _resolution(uri: str, query: str) -> int | None:
    fields = parse_qs(query, keep_blank_values=True)
    unknown = sorted(set(fields) - {"resolution"})
    if unknown:
        raise BadInputError(f"source {uri!r}: unknown query parameter(s) {', '.join(unknown)}; only ?resolution=N.")
    if "resolution" not in fields:
        return None
    value = fields["resolution"][-1]
    if not value.isdigit():
        raise BadInputError(f"source {uri!r}: resolution must be a level number 0, 1, ..., got {value!r}.")
    return int(value)


def open_source(uri: str) -> OpenVolume:
    """Open the volume a source names: shape, dtype, voxel size, and a box reader.

    Raises
    ------
    BadInputError
        If the data is missing, unreadable, not a numeric 2D/3D image, or the level, array
        or dataset named does not exist.
    """
    from neuropipe.io import boss, chunked, files

    source = parse_source(uri)
    opener = {"zarr": chunked.open_zarr, "hdf5": chunked.open_hdf5, "precomputed": chunked.open_precomputed,
              "bossdb": boss.open_boss}.get(source.format, files.open_file)
    try:
        return opener(source)
    except (BadInputError, TransientError):
        raise
    except Exception as error:
        raise BadInputError(f"source {uri!r}: cannot read {source.path} as {source.format}: "
                            f"{error.__class__.__name__}: {error}") from error


def voxel_size(uri: str) -> tuple[float, float, float] | None:
    """Return the ZYX voxel size in nm from the source's metadata, or None where it has none."""
    return open_source(uri).voxel_size_nm


def volume_shape(uri: str) -> tuple[int, int, int]:
    """Return the ZYX shape of the volume a source names, reading as little as possible."""
    return tuple(open_source(uri).shape)


def read_volume(uri: str, bbox: str | None = None) -> np.ndarray:
    """Read a volume, or the part inside ``bbox``, as a ZYX array.

    Parameters
    ----------
    uri : str
        A source URI (see :func:`parse_source`).
    bbox : str, optional
        ``"z0:z1,y0:y1,x0:x1"`` in the source's voxel coordinates; default: the whole volume.

    Returns
    -------
    ndarray of shape (Z, Y, X)

    Raises
    ------
    BadInputError
        If the source is missing or unreadable, the array is not 2D/3D numeric, the box is
        malformed or outside the volume, the volume is empty, or it holds NaN/inf values.
    """
    volume = open_source(uri)
    return read_part(volume, box_slices(volume, bbox), bbox or "the volume")


def box_slices(volume: OpenVolume, bbox: str | None) -> tuple[slice, slice, slice]:
    """Return the slices (relative to the volume's origin) of ``bbox``, the whole volume for None.

    Raises
    ------
    BadInputError
        If the box is malformed or reaches outside the volume, or the volume is empty.
    """
    if bbox:
        return check_inside(parse_bbox(bbox), volume.shape, what=f"volume {volume.uri}", origin=volume.origin)
    if 0 in tuple(volume.shape):
        raise BadInputError(f"source {volume.uri!r} holds an empty volume of shape {tuple(volume.shape)}.")
    return tuple(slice(0, size) for size in volume.shape)


def read_part(volume: OpenVolume, slices, what: str = "a box") -> np.ndarray:
    """Read the ZYX ``slices`` of an opened volume, refusing NaN and infinite voxels.

    Raises
    ------
    BadInputError
        If reading fails for a reason another try would not change, or voxels are not finite.
    TransientError
        If the source's server failed in a way another try may not (see :mod:`.boss`).
    """
    try:
        array = np.ascontiguousarray(volume.read(slices))
    except (BadInputError, TransientError):
        raise
    except Exception as error:
        raise BadInputError(f"source {volume.uri!r}: reading {what} failed: "
                            f"{error.__class__.__name__}: {error}") from error
    if array.size == 0:
        raise BadInputError(f"source {volume.uri!r} holds an empty volume of shape {array.shape}.")
    if array.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            raise BadInputError(f"source {volume.uri!r}: {bad} of {array.size} voxels are NaN or infinite "
                                f"(reading {what}).")
    return array
