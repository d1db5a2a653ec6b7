"""``neuropipe view``: a dataset's image, membrane probability and cells as Neuroglancer layers over localhost.

The arrays are written once, block by block, as Neuroglancer precomputed layers (raw
encoding, scale 0 only) into a cache folder beside a local store, ``<store>/viewer-cache/<prefix>``
(for an object store, under this machine's data home, :func:`neuropipe.config.data_home`):
``<dataset>/image``, ``<dataset>/probability`` and ``<dataset>/labels`` (segmentation).  Each layer
records what it was made from (``neuropipe.json``: the key and stored path) and is written
again only when that changes.  A small HTTP server serves the folder with CORS open
(``Access-Control-Allow-Origin: *``), so the Neuroglancer page, from another origin, can read it.

Which map and detection of a dataset are shown is chosen as in the report
(:mod:`neuropipe.reports.results`): the best-scoring detection and its map, unless a key
restriction says otherwise.
"""

from __future__ import annotations

import functools
import json
import logging
import shutil
import signal
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from itertools import product
from pathlib import Path

import numpy as np

from neuropipe.config import data_home
from neuropipe.errors import BadInputError
from neuropipe.io.precomputed import PRECOMPUTED_CHUNK_XYZ
from neuropipe.io.stored import open_stored
from neuropipe.pipeline import classes_around
from neuropipe.reports import neuroglancer
from neuropipe.reports.results import dataset_results
from neuropipe.store import is_remote

logger = logging.getLogger(__name__)
WRITE_BLOCK = (64, 512, 512)  # ZYX voxels copied at a time: whole chunks of PRECOMPUTED_CHUNK_XYZ
STAMP = "neuropipe.json"


def cache_folder(settings) -> Path:
    """Return the viewer's cache folder for ``settings``' store and schema prefix."""
    folder = data_home() if is_remote(settings) else Path(settings.store)  # never in an object store
    return folder / "viewer-cache" / settings.schema_prefix


def prepare(dataset: str, tables, cache, *, restriction: dict | None = None):
    """Write (or reuse) the precomputed layers of ``dataset`` under ``cache``; return its result and layers.

    Returns
    -------
    tuple
        The :class:`~neuropipe.reports.results.Result` shown and the names of its layers.

    Raises
    ------
    BadInputError
        For an unknown dataset, one without an imported volume, or a name unfit for a folder.
    """
    if not dataset or "/" in dataset or dataset in (".", ".."):
        raise BadInputError(f"dataset {dataset!r}: not a name that can be served.")
    classes = classes_around(tables)
    if "Volume" not in classes:
        raise BadInputError("the pipeline has no Volume table: nothing to view.")
    results = dataset_results(classes, dataset=dataset, restriction=restriction)
    if not results:
        raise BadInputError(f"dataset {dataset!r} has no imported volume yet (Volume); run workers first.")
    result = results[0]
    folder = Path(cache) / dataset
    image, chunked = (classes["Volume"] & result.volume).fetch1("image", "image_zarr")
    reference = chunked if image is None else image
    sources = {"image": (open_stored(reference), reference, result.volume, "image")}
    for layer, table, attribute in (("probability", "MembraneMap", "probability"),
                                    ("labels", result.detection_table, "labels")):
        key = getattr(result, layer)
        if key is not None:
            stored = (classes[table] & key).fetch1(attribute)
            sources[layer] = (open_stored(stored), stored, key, "segmentation" if layer == "labels" else "image")
    for layer, (array, reference, key, kind) in sources.items():
        stamp = {"key": {k: str(v) for k, v in key.items()}, "path": str(getattr(reference, "path", ""))}
        write_layer(folder / layer, array, kind=kind, voxel_size=result.voxel_size, stamp=stamp)
    return result, tuple(sources)


def write_layer(folder: Path, array, *, kind: str, voxel_size, stamp: dict) -> bool:
    """Write a ZYX array as a precomputed layer at ``folder``, block by block, unless it is there already.

    Parameters
    ----------
    folder : Path
    array : array-like
        Sliced lazily (a memory-mapped ``.npy`` or a zarr array): only one block is read at a time.
    kind : {'image', 'segmentation'}
    voxel_size : tuple of float
        ZYX, nanometres.
    stamp : dict
        What the layer is made from; a layer whose recorded stamp equals it is kept.

    Returns
    -------
    bool
        True when written, False when the cached layer was kept.
    """
    if _read_stamp(folder) == stamp:
        return False
    partial = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    store = _create(partial, array.shape, layer_dtype(array.dtype, kind), kind, voxel_size)
    blocks = [range(0, size, step) for size, step in zip(array.shape, WRITE_BLOCK)]
    for z, y, x in product(*blocks):
        box = tuple(slice(start, min(start + step, size))
                    for start, step, size in zip((z, y, x), WRITE_BLOCK, array.shape))
        data = np.asarray(array[box]).astype(store.dtype.numpy_dtype, copy=False)
        store[box[2], box[1], box[0], 0].write(np.transpose(data, (2, 1, 0))).result()
    (partial / STAMP).write_text(json.dumps(stamp, sort_keys=True))
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    logger.info("wrote %s layer %s (%s, %s)", kind, folder, "x".join(map(str, array.shape)), store.dtype.numpy_dtype)
    return True


def layer_dtype(dtype, kind: str) -> np.dtype:
    """Return the precomputed data type an array of ``dtype`` is written as."""
    dtype = np.dtype(dtype)
    if kind == "segmentation":
        return np.dtype(np.uint32 if dtype.kind in "ub" and dtype.itemsize <= 4 else np.uint64)
    if dtype.kind == "b":
        return np.dtype(np.uint8)
    if dtype.kind in "ui" and dtype.itemsize <= 4:
        return dtype
    return np.dtype(np.float32)


def _create(folder: Path, shape, dtype: np.dtype, kind: str, voxel_size):
    import tensorstore

    size = [int(v) for v in shape[::-1]]
    spec = {"driver": "neuroglancer_precomputed", "kvstore": {"driver": "file", "path": str(folder)},
            "multiscale_metadata": {"type": kind, "data_type": dtype.name, "num_channels": 1},
            "scale_metadata": {"size": size, "voxel_offset": [0, 0, 0],
                               "resolution": [float(v) for v in voxel_size[::-1]], "encoding": "raw",
                               "chunk_size": [min(a, b) for a, b in zip(size, PRECOMPUTED_CHUNK_XYZ)]}}
    return tensorstore.open(spec, create=True).result()


def _read_stamp(folder: Path):
    try:
        return json.loads((folder / STAMP).read_text())
    except (OSError, ValueError):
        return None


class CorsHandler(SimpleHTTPRequestHandler):
    """Serves files with ``Access-Control-Allow-Origin: *``; ``info`` files as JSON."""

    def end_headers(self):
        """Add the CORS headers to every response."""
        self.send_header("Access-Control-Allow-Origin", "*")
        self.send_header("Access-Control-Allow-Methods", "GET, HEAD, OPTIONS")
        self.send_header("Access-Control-Allow-Headers", "*")
        super().end_headers()

    def do_OPTIONS(self):  # noqa: N802 (the name http.server dispatches to)
        """Answer a CORS preflight."""
        self.send_response(204)
        self.end_headers()

    def guess_type(self, path):
        """Return JSON for precomputed ``info`` files, else the usual guess."""
        return "application/json" if str(path).endswith("/info") else super().guess_type(path)

    def log_message(self, format, *args):  # noqa: A002 (the signature http.server calls)
        """Log requests at debug level instead of printing them."""
        logger.debug("%s " + format, self.address_string(), *args)


class ViewerServer(ThreadingHTTPServer):
    """The threaded HTTP server of a cache folder.

    Attributes
    ----------
    root : Path
        The folder served.
    base_url : str
        ``http://host:port`` it answers at.
    link : str
        The Neuroglancer link of the dataset served (set by :func:`serve_dataset`).
    """

    daemon_threads = True
    link = ""

    def __init__(self, root: Path, host: str, port: int):
        self.root = Path(root)
        super().__init__((host, port), functools.partial(CorsHandler, directory=str(self.root)))
        self.base_url = neuroglancer.base_url(host, self.server_address[1])
        self._thread = threading.Thread(target=self.serve_forever, name="neuropipe-view", daemon=True)

    def start(self) -> ViewerServer:
        """Serve from a daemon thread; return self."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self.shutdown()
        self.server_close()
        self._thread.join(timeout=5)


def serve(root, *, host: str = "127.0.0.1", port: int = neuroglancer.DEFAULT_PORT) -> tuple[ViewerServer, str]:
    """Serve ``root`` with CORS open from a thread; return the server and its base URL (port 0: any free port)."""
    server = ViewerServer(Path(root), host, port).start()
    return server, server.base_url


def serve_dataset(dataset: str, tables, cache, *, host: str = "127.0.0.1", port: int = neuroglancer.DEFAULT_PORT,
                  restriction: dict | None = None) -> tuple[ViewerServer, str]:
    """Prepare ``dataset``'s layers under ``cache`` and serve them from a thread.

    Returns
    -------
    tuple
        The running :class:`ViewerServer` (its ``link`` is the Neuroglancer link; ``stop()``
        ends it) and the base URL: layers are at ``<url>/<dataset>/image`` and so on.
    """
    result, layers = prepare(dataset, tables, cache, restriction=restriction)
    server, url = serve(cache, host=host, port=port)
    server.link = neuroglancer.link(url, dataset, layers, result.shape, result.voxel_size)
    return server, url


def view(dataset: str, tables, cache, *, host: str = "127.0.0.1", port: int = neuroglancer.DEFAULT_PORT,
         restriction: dict | None = None) -> int:
    """Serve ``dataset``, print its Neuroglancer link and block until Ctrl-C or SIGTERM; return 0.

    In the main thread both signals only set an event that the serving loop checks, so they never
    interrupt the server or a lock half-way (a ``KeyboardInterrupt`` can); the previous handlers
    are restored on the way out.
    """
    server, url = serve_dataset(dataset, tables, cache, host=host, port=port, restriction=restriction)
    stopping = threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for number in (signal.SIGINT, signal.SIGTERM):
            previous[number] = signal.signal(number, lambda *_: stopping.set())
    print(f"serving {dataset} at {url}/{dataset}/ (from {Path(cache) / dataset}); Ctrl-C stops", flush=True)
    print(f"Neuroglancer: {server.link}", flush=True)
    try:
        while not stopping.wait(0.5):
            pass
    finally:
        server.stop()
        for number, handler in previous.items():
            signal.signal(number, handler)
    return 0
