"""Source and target URIs: what they may say, and what they name once parsed.

Every volume neuropipe reads or writes is named by one URI syntax, parsed here and nowhere
else, so that a source and a target that name the same data are read the same way:

=====================================================  ==========================================
URI                                                    format
=====================================================  ==========================================
``file:///data/stack.npy`` (or a plain path)           ``npy``; ``.npz`` (``#array``), ``.tif``
``file:///data/vol.zarr``, ``...zarr#group/array``     ``zarr`` (an OME-Zarr level by
                                                       ``?resolution=N``)
``file:///data/sample.h5#volumes/raw``                 ``hdf5`` (``.h5``, ``.hdf5``, ``.hdf``)
``precomputed://file:///data/layer?resolution=1``      ``precomputed`` (also ``gs://``, ``s3://``,
                                                       ``http(s)://`` layers)
``bossdb://collection/experiment/channel``             ``bossdb`` (``?resolution=N``)
=====================================================  ==========================================

Parsing opens nothing: it checks the syntax and says which format module
(:mod:`~neuropipe.io.files`, :mod:`~neuropipe.io.zarr_arrays`, :mod:`~neuropipe.io.hdf5`,
:mod:`~neuropipe.io.precomputed`, :mod:`~neuropipe.io.boss`) reads or writes the data.  Only
zarr, precomputed and Boss can be written to (:func:`parse_target`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from neuropipe.errors import BadInputError

SUPPORTED_SUFFIXES = (".npy", ".npz", ".tif", ".tiff", ".zarr", ".h5", ".hdf5", ".hdf")
TARGET_FORMATS = ("bossdb", "precomputed", "zarr")
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


Target = Source
"""A parsed target URI: the same description as a source, of a format in :data:`TARGET_FORMATS`."""


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


def parse_target(uri: str) -> Target:
    """Parse a target URI and check it names something neuropipe can write (nothing is opened).

    Parameters
    ----------
    uri : str
        A ``bossdb://`` channel, a ``precomputed://`` layer or a ``.zarr`` array, at resolution 0.

    Returns
    -------
    Target

    Raises
    ------
    BadInputError
        For a malformed URI or a format that cannot be written (``.npy``, ``.tif``, HDF5...).
    """
    target = parse_source(uri)
    if target.format not in TARGET_FORMATS:
        raise BadInputError(f"target {uri!r}: cannot write {target.format} files; write to bossdb://, "
                            "precomputed:// or a .zarr array.")
    if target.resolution:
        raise BadInputError(f"target {uri!r}: results are written at resolution 0; drop ?resolution.")
    return target


def _parse_precomputed(uri: str, rest: str) -> Source:
    """Parse what follows ``precomputed://``: the URL of the layer's folder."""
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
    """Parse a ``bossdb://collection/experiment/channel`` URI already split by ``urlsplit``."""
    names = [parts.netloc, *parts.path.strip("/").split("/")] if parts.path.strip("/") else [parts.netloc]
    if len(names) != 3 or not all(names):
        raise BadInputError(f"source {uri!r}: a Boss channel is bossdb://collection/experiment/channel.")
    if parts.fragment:
        raise BadInputError(f"source {uri!r}: Boss channels take no '#' part.")
    return Source(uri=uri, format="bossdb", path=Path(*names), resolution=_resolution(uri, parts.query),
                  location="bossdb://" + "/".join(names))


def _resolution(uri: str, query: str) -> int | None:
    """Return the level a ``?resolution=N`` query names, None without one; refuse any other query."""
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
