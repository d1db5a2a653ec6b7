"""Arrays in the DataJoint store: one ``.npy`` for small volumes, a chunked zarr array for large ones.

A volume of up to ``neuropipe.zarr_above_mb`` megabytes (default 256) is kept as one ``.npy``
(``<npy@neuropipe>``): one file, loaded whole, as fast as it gets.  A larger one is written
as a zarr array inside an ``<object@neuropipe>`` attribute, chunk by chunk as it is read from
its source, so neither the import nor a later step that reads a part of it ever holds the
whole volume in memory.  :func:`open_stored` gives either back as something sliced lazily.
The store's zarr arrays are chunked like every zarr array neuropipe writes (:data:`ZARR_CHUNKS`,
stated in :mod:`~neuropipe.io.zarr_arrays`).
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from itertools import product
from typing import Callable

import numpy as np

from neuropipe import compat
from neuropipe.io.zarr_arrays import ZARR_CHUNKS, chunks_within

COPY_BLOCK = (64, 1024, 1024)  # ZYX voxels read from a source at a time (a whole number of chunks)


@dataclass(frozen=True)
class Statistics:
    """Intensity statistics of a volume, gathered block by block.

    ``slice_mean`` and ``slice_std`` hold one value per z plane: a model that normalises each
    slice by its own statistics needs the whole slice's when it sees a block of it.
    """

    minimum: float
    maximum: float
    mean: float
    slice_mean: np.ndarray
    slice_std: np.ndarray


def codec_options(dtype) -> dict:
    """Return the ``zarr.open_array`` keywords of the compressor neuropipe writes ``dtype`` with.

    Blosc with LZ4: labels bit-shuffled, everything else byte-shuffled. On a block of 8 M
    detection fragments (uint64) zarr's default (Zstandard) wrote 2.3 MB in 0.27-0.47 s, this
    4.4 MB in 0.06 s; a float32 probability map 30 MB either way, 0.05 s against 0.04 s.
    Reads are as fast or faster. Compression runs inside a worker's job, so its speed is
    the job's.
    """
    shuffle = "bitshuffle" if np.issubdtype(np.dtype(dtype), np.integer) else "shuffle"
    if _zarr_3():
        from zarr.codecs import BloscCodec, BytesCodec

        return {"codecs": [BytesCodec(), BloscCodec(cname="lz4", clevel=5, shuffle=shuffle)]}
    from numcodecs import Blosc  # zarr 2 (Python 3.10)

    return {"compressor": Blosc(cname="lz4", clevel=5, shuffle=Blosc.BITSHUFFLE if shuffle == "bitshuffle"
                                else Blosc.SHUFFLE)}


def write_options() -> dict:
    """Return the ``zarr.open_array`` keywords of an array opened to be written.

    Every chunk is written as it comes: zarr otherwise first compares each chunk with the
    fill value to skip empty ones, a pass over the chunk that cost 0.1 s per 64 MB block of
    labels, to save a few bytes a compressed empty chunk takes.
    """
    if _zarr_3():
        return {"config": {"write_empty_chunks": True}}
    return {"write_empty_chunks": True}


def _zarr_3() -> bool:
    """Return True under zarr-python 3 (the CUDA image's Python 3.10 has zarr 2, whose keywords differ)."""
    import zarr

    return int(zarr.__version__.split(".")[0]) >= 3


def create_zarr(fsmap, shape, dtype, chunks=None):
    """Create an empty zarr array where an fsspec mapping points (e.g. a staged ``<object>`` field).

    A local store is written through zarr's own directory store: fsspec's local filesystem does
    not create the nested folders zarr format 3 chunk keys need.
    """
    import zarr

    chunks = chunks_within(shape, chunks or ZARR_CHUNKS)
    return zarr.open_array(store=_zarr_store(fsmap), mode="w", shape=tuple(shape), chunks=chunks,
                           dtype=np.dtype(dtype), **codec_options(dtype), **write_options())


def open_stored(value):
    """Return a stored array attribute as an array sliced lazily (ZYX).

    Parameters
    ----------
    value : numpy array, DataJoint ``NpyRef`` or ``ObjectRef``
        What ``fetch1`` returned for an ``<npy@>`` or an ``<object@>`` zarr attribute.
    """
    if hasattr(value, "fsmap"):
        import zarr

        return zarr.open_array(store=_zarr_store(value.fsmap), mode="r")
    if hasattr(value, "load"):  # DataJoint's NpyRef: a slice reads only its part
        fs, path = compat.npy_location(value)
        if "file" in _protocols(fs):
            return value.load(mmap_mode="r")
        return RangedNpy(fs, path)
    return np.asarray(value)


class RangedNpy:
    """A ``.npy`` file in an object store, read by byte ranges: a box reads only the rows it touches.

    DataJoint's own ``NpyRef.load(mmap_mode='r')`` downloads a remote file whole before
    mapping it.  Here the header is read once (its first kilobytes), and ``array[box]`` asks
    for one byte range per plane of the leading axes (whole rows of the last axis, so a box
    narrower than a row reads the row's width), all at once.

    Parameters
    ----------
    fs : fsspec.AbstractFileSystem
        The store's filesystem (``s3fs``, ``gcsfs``).
    path : str
        The file's full path in it.
    """

    def __init__(self, fs, path: str):
        self.fs, self.path = fs, path
        head = fs.cat_file(path, start=0, end=4096)
        stream = io.BytesIO(head)
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
        if stream.tell() > len(head) or fortran or dtype.hasobject:
            raise ValueError(f"{path}: not a C-ordered numeric .npy with a header under 4 kB")
        self.shape, self.dtype, self.offset = tuple(shape), np.dtype(dtype), stream.tell()

    @property
    def ndim(self) -> int:
        """int: Number of axes."""
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype=None, copy=None):
        whole = self[(slice(None),) * self.ndim]
        return whole if dtype is None else whole.astype(dtype, copy=False)

    def __getitem__(self, index):
        axes, drop = self._ranges(index)
        bounds = [(min(axis), max(axis) + 1) if len(axis) else (0, 0) for axis in axes]
        box = self._read_box(bounds)
        picked = box[np.ix_(*[np.asarray(axis, dtype=np.intp) - low for axis, (low, _) in zip(axes, bounds)])]
        return picked[drop]

    def _ranges(self, index) -> tuple[list, tuple]:
        """Return the positions ``index`` picks on each axis, and the indexing that drops integer-indexed axes."""
        index = index if isinstance(index, tuple) else (index,)
        if Ellipsis in index:
            at = index.index(Ellipsis)
            index = index[:at] + (slice(None),) * (self.ndim - len(index) + 1) + index[at + 1:]
        if len(index) > self.ndim:
            raise IndexError(f"too many indices for an array of {self.ndim} dimensions")
        index = index + (slice(None),) * (self.ndim - len(index))
        axes = []
        for part, size in zip(index, self.shape):
            if isinstance(part, slice):
                axes.append(range(*part.indices(size)))
                continue
            position = int(part) + size if int(part) < 0 else int(part)
            if not 0 <= position < size:
                raise IndexError(f"index {part} is out of bounds for an axis of size {size}")
            axes.append(range(position, position + 1))
        return axes, tuple(slice(None) if isinstance(part, slice) else 0 for part in index)

    def _read_box(self, bounds) -> np.ndarray:
        """Read the box ``bounds`` ((start, stop) per axis) with whole rows of the last axis, one range per plane."""
        shape = [high - low for low, high in bounds]
        if 0 in shape:
            return np.empty(shape, self.dtype)
        itemsize, width = self.dtype.itemsize, self.shape[-1]
        strides = [int(np.prod(self.shape[axis + 1:])) for axis in range(self.ndim)]  # in items
        starts, ends = [], []
        if self.ndim == 1:
            starts, ends = [self.offset + bounds[0][0] * itemsize], [self.offset + bounds[0][1] * itemsize]
        else:
            (row_low, row_high) = bounds[-2]
            for plane in product(*[range(low, high) for low, high in bounds[:-2]]):
                first = sum(position * stride for position, stride in zip((*plane, row_low), strides))
                starts.append(self.offset + first * itemsize)
                ends.append(self.offset + (first + (row_high - row_low) * width) * itemsize)
        pieces = self.fs.cat_ranges([self.path] * len(starts), starts, ends)
        rows = np.frombuffer(b"".join(pieces), self.dtype)
        if self.ndim == 1:
            return rows
        return rows.reshape(shape[:-1] + [width])[..., bounds[-1][0]:bounds[-1][1]]



def copy_in_blocks(read: Callable, shape, target, *, block=None, progress=None) -> Statistics:
    """Copy a volume block by block into ``target``, gathering its statistics on the way.

    Parameters
    ----------
    read : callable
        ``read(slices)`` returns the ZYX array inside three slices.
    shape : tuple of int
        ZYX extent to copy.
    target : zarr array
        Written block by block at the same coordinates.
    block : tuple of int, optional
        ZYX size of the blocks read at once (default :data:`COPY_BLOCK`); a multiple of the
        target's chunks keeps writes whole.
    progress : callable, optional
        ``progress(done, total, seconds)`` after every block.
    """
    block = block or COPY_BLOCK
    starts = [range(0, size, step) for size, step in zip(shape, block)]
    boxes = list(product(*starts))
    low, high = np.inf, -np.inf
    sums, squares = np.zeros(shape[0]), np.zeros(shape[0])
    began = time.monotonic()
    for done, corner in enumerate(boxes, 1):
        slices = tuple(slice(start, min(start + step, size)) for start, step, size in zip(corner, block, shape))
        part = read(slices)
        target[slices] = part
        low, high = min(low, float(part.min())), max(high, float(part.max()))
        sums[slices[0]] += part.sum(axis=(1, 2), dtype=np.float64)
        for plane, values in zip(range(slices[0].start, slices[0].stop), part):  # float64 one plane at a time
            squares[plane] += np.square(values, dtype=np.float64).sum()
        if progress:
            progress(done, len(boxes), time.monotonic() - began)
    pixels = float(shape[1] * shape[2])
    slice_mean = sums / pixels
    slice_std = np.sqrt(np.maximum(squares / pixels - slice_mean**2, 0.0))
    return Statistics(low, high, float(sums.sum() / (pixels * shape[0])), slice_mean, slice_std)


def statistics(array: np.ndarray) -> Statistics:
    """Return the statistics of an array held in memory."""
    return Statistics(float(array.min()), float(array.max()), float(array.mean(dtype=np.float64)),
                      array.mean(axis=(1, 2), dtype=np.float64), array.std(axis=(1, 2), dtype=np.float64))


def _protocols(fs) -> tuple:
    protocol = fs.protocol
    return protocol if isinstance(protocol, (tuple, list)) else (protocol,)


def _zarr_store(fsmap):
    if "file" not in _protocols(fsmap.fs):
        return fsmap
    try:
        from zarr.storage import LocalStore
    except ImportError:  # zarr 2
        from zarr.storage import DirectoryStore as LocalStore
    return LocalStore(fsmap.root)
