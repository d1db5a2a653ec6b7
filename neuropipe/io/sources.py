"""Volume sources: URIs that name an array on disk.

Supported today: ``file://`` URIs (or plain paths) to ``.npy``, ``.npz`` (the array named
after ``#``, optional when the archive holds one array) and ``.tif``/``.tiff`` stacks.
A 2D image is read as a one-plane ZYX volume.  ``.npy`` files are memory-mapped, so a
bounding box reads only its part.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np

from neuropipe.errors import BadInputError
from neuropipe.io.bbox import check_inside, parse_bbox

SUPPORTED_SUFFIXES = (".npy", ".npz", ".tif", ".tiff")


@dataclass(frozen=True)
class Source:
    """A parsed source URI: the file, its format and (for ``.npz``) the array name."""

    uri: str
    path: Path
    suffix: str
    array: str | None = None


def parse_source(uri: str) -> Source:
    """Parse and check the syntax of a source URI (the file is not opened).

    Parameters
    ----------
    uri : str
        ``file:///abs/path.npy``, ``file://relative/path.npz#image``, or a plain path.

    Returns
    -------
    Source

    Raises
    ------
    BadInputError
        For an unsupported scheme or file suffix, or an empty path.
    """
    if not isinstance(uri, str) or not uri.strip():
        raise BadInputError(f"source must be a non-empty URI string, got {uri!r}.")
    parts = urlsplit(uri.strip())
    if parts.scheme in ("", "file"):
        raw_path = parts.netloc + parts.path if parts.scheme else parts.path
    else:
        raise BadInputError(
            f"source {uri!r} has the unsupported scheme {parts.scheme!r}; use file:// "
            f"(with a file ending in {', '.join(SUPPORTED_SUFFIXES)})."
        )
    path = Path(unquote(raw_path)).expanduser()
    if not raw_path:
        raise BadInputError(f"source {uri!r} names no file.")
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise BadInputError(
            f"source {uri!r}: files ending in {suffix or '(no suffix)'!r} are not supported; "
            f"use one of {', '.join(SUPPORTED_SUFFIXES)}."
        )
    return Source(uri=uri, path=path, suffix=suffix, array=parts.fragment or None)


def volume_shape(uri: str) -> tuple[int, int, int]:
    """Return the ZYX shape of the volume a source names, reading as little as possible."""
    return tuple(_open(parse_source(uri)).shape)


def read_volume(uri: str, bbox: str | None = None) -> np.ndarray:
    """Read a volume, or the part inside ``bbox``, as a ZYX array.

    Parameters
    ----------
    uri : str
        A source URI (see :func:`parse_source`).
    bbox : str, optional
        ``"z0:z1,y0:y1,x0:x1"``; default: the whole volume.

    Returns
    -------
    ndarray of shape (Z, Y, X)

    Raises
    ------
    BadInputError
        If the file is missing or unreadable, the array is not 2D/3D numeric, the box is
        malformed or outside the volume, the volume is empty, or it holds NaN/inf values.
    """
    source = parse_source(uri)
    array = _open(source)
    if bbox:
        array = array[check_inside(parse_bbox(bbox), array.shape, what=f"volume {uri}")]
    volume = np.ascontiguousarray(array)
    if volume.size == 0:
        raise BadInputError(f"source {uri!r} holds an empty volume of shape {volume.shape}.")
    if volume.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(volume)))
        if bad:
            raise BadInputError(f"source {uri!r}: {bad} of {volume.size} voxels are NaN or infinite.")
    return volume


def _open(source: Source) -> np.ndarray:
    if not source.path.is_file():
        raise BadInputError(f"source {source.uri!r}: file {source.path} does not exist.")
    try:
        array = _READERS[source.suffix](source)
    except BadInputError:
        raise
    except Exception as error:
        raise BadInputError(
            f"source {source.uri!r}: cannot read {source.path} as {source.suffix}: {error.__class__.__name__}: {error}"
        ) from error
    return _as_zyx(array, source.uri)


def _read_npy(source: Source) -> np.ndarray:
    return np.load(source.path, mmap_mode="r", allow_pickle=False)


def _read_npz(source: Source) -> np.ndarray:
    with np.load(source.path, allow_pickle=False) as archive:
        names = list(archive.files)
        name = source.array
        if name is None and len(names) == 1:
            name = names[0]
        if name is None:
            raise BadInputError(
                f"source {source.uri!r}: the archive holds {len(names)} arrays ({', '.join(names)}); "
                "name one after '#', e.g. file.npz#image."
            )
        if name not in names:
            raise BadInputError(f"source {source.uri!r}: no array {name!r} in the archive (it has {', '.join(names)}).")
        return archive[name]


def _read_tif(source: Source) -> np.ndarray:
    import tifffile

    return tifffile.imread(source.path)


_READERS = {".npy": _read_npy, ".npz": _read_npz, ".tif": _read_tif, ".tiff": _read_tif}


def _as_zyx(array: np.ndarray, uri: str) -> np.ndarray:
    if array.dtype.kind not in "biuf":
        raise BadInputError(f"source {uri!r}: dtype {array.dtype} is not a numeric image type.")
    if array.ndim == 2:
        array = array[np.newaxis]
    if array.ndim != 3:
        raise BadInputError(f"source {uri!r}: expected a 2D or 3D (ZYX) array, got shape {array.shape}.")
    return array
