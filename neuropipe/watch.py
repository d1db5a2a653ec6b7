"""New data grows the graph: ``neuropipe watch PATH|bossdb://collection``.

Each scan lists the volumes under a folder (files and folders neuropipe can read, see
:mod:`neuropipe.io.uri`) or the image channels of a Boss collection, and inserts a
``Dataset`` row for each one not registered yet, so running workers pick it up with no one
starting anything.  Scans are idempotent: a source already named by a ``Dataset`` row is left
alone.  A file (or any file of a zarr/precomputed folder) modified in the last ``settle``
seconds may still be being written, and one that cannot be opened is taken for half-written:
both are skipped until a later scan.

Naming rule: the path relative to the watched folder (or ``experiment_channel`` in a
collection), lower-cased, every run of other characters than letters, digits and ``_``
replaced by ``_``, cut to 64 characters; a name taken by another source gets a short hash
of its source appended.  The voxel size comes from the source's metadata where it has one
(see ``schemas.volume.Dataset``), else from ``voxel_size``.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

from neuropipe.errors import BadInputError
from neuropipe.io.sources import open_source
from neuropipe.io.uri import SUPPORTED_SUFFIXES

logger = logging.getLogger(__name__)

FOLDER_FORMATS = (".zarr",)


@dataclass(frozen=True)
class Found:
    """A volume found by a scan: the dataset name it would get and its source URI."""

    name: str
    source: str


def scan(target: str, *, settle: float = 10.0, known=frozenset()) -> list[Found]:
    """List the readable volumes at ``target`` (a folder or ``bossdb://collection``) that have settled.

    Sources in ``known`` (registered already) are passed over before their files are looked at.
    """
    if target.startswith("bossdb://"):
        return _scan_collection(target, known)
    root = Path(target.removeprefix("file://")).expanduser().absolute()
    if not root.is_dir():
        raise BadInputError(f"watch: {root} is not a folder (or use bossdb://collection).")
    found = []
    for path in sorted(_candidates(root)):
        if _source_of(path) in known:
            continue
        if time.time() - _newest_change(path) < settle:
            logger.info("watch: %s changed in the last %.0f s; next scan", path, settle)
            continue
        source = _source_of(path)
        try:
            open_source(source)
        except Exception as error:  # half-written, truncated, or several arrays to choose from
            logger.warning("watch: %s not taken: %s", path, error)
            continue
        found.append(Found(_name(path.relative_to(root).with_suffix("").as_posix()), source))
    return found


def register(found: list[Found], dataset_table, *, voxel_size=None) -> list[str]:
    """Insert a ``Dataset`` row for every found volume whose source is not registered; return their names."""
    known = registered_sources(dataset_table)
    taken = set(known.values())
    inserted = []
    for item in found:
        if item.source in known:
            continue
        name = item.name
        if name in taken:
            name = f"{name[:55]}_{hashlib.md5(item.source.encode()).hexdigest()[:8]}"
        row = {"dataset": name, "source": item.source, "description": "registered by neuropipe watch"}
        if voxel_size is not None:
            row.update(zip(("voxel_z_nm", "voxel_y_nm", "voxel_x_nm"), voxel_size))
        dataset_table.insert1(row, skip_duplicates=True)
        taken.add(name)
        inserted.append(name)
        logger.info("watch: registered %s from %s", name, item.source)
    return inserted


def registered_sources(dataset_table) -> dict:
    """Return ``{source: dataset}`` of the rows of ``dataset_table``."""
    return dict(zip(*dataset_table.to_arrays("source", "dataset"))) if len(dataset_table()) else {}


def watch(target: str, dataset_table, *, every: float = 60.0, once: bool = False, settle: float = 10.0,
          voxel_size=None, stop=lambda: False) -> list[str]:
    """Scan ``target`` and register what is new, every ``every`` seconds (once with ``once``); return the names."""
    registered = []
    while True:
        found = scan(target, settle=settle, known=set(registered_sources(dataset_table)))
        registered += register(found, dataset_table, voxel_size=voxel_size)
        deadline = time.monotonic() + every
        while not (once or stop()) and time.monotonic() < deadline:
            time.sleep(min(0.5, every))
        if once or stop():
            return registered


def _candidates(root: Path):
    for path in root.rglob("*"):
        if any(part.endswith(FOLDER_FORMATS) for part in path.relative_to(root).parts[:-1]):
            continue  # inside a zarr store
        if path.is_dir() and path.suffix.lower() in FOLDER_FORMATS:
            yield path
        elif path.is_dir() and (path / "info").is_file():
            yield path  # a precomputed layer
        elif path.is_file() and path.suffix.lower() in SUPPORTED_SUFFIXES and path.suffix.lower() != ".zarr":
            yield path


def _source_of(path: Path) -> str:
    if path.is_dir() and path.suffix.lower() not in FOLDER_FORMATS:
        return f"precomputed://{path.as_uri()}"
    return path.as_uri()


def _newest_change(path: Path) -> float:
    if path.is_file():
        return path.stat().st_mtime
    return max([item.stat().st_mtime for item in path.rglob("*")] + [path.stat().st_mtime])


def _name(text: str) -> str:
    return re.sub(r"[^a-z0-9_]+", "_", text.lower()).strip("_")[:64] or "volume"


def _scan_collection(target: str, known) -> list[Found]:
    from neuropipe.io.boss import boss_remote

    collection = target.removeprefix("bossdb://").strip("/")
    if not collection or "/" in collection:
        raise BadInputError(f"watch: {target!r}: name a Boss collection, bossdb://collection.")
    remote = boss_remote()
    found = []
    for experiment in remote.list_experiments(collection):
        for channel in remote.list_channels(collection, experiment):
            source = f"bossdb://{collection}/{experiment}/{channel}"
            if source not in known and remote.get_channel(channel, collection, experiment).type == "image":
                found.append(Found(_name(f"{experiment}_{channel}"), source))
    return found
