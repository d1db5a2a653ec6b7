"""Volumes and their expert annotations: where every pipeline run begins.

A scientist registers a :class:`Dataset` (a source URI, an optional bounding box, the voxel
size) and, where experts labelled it, an :class:`Annotation`.  Workers then import the
arrays into :class:`Volume` and :class:`AnnotationVolume`, which keep them in the DataJoint
store (``<npy@neuropipe>``), never in a table blob.
"""

import logging

import numpy as np

from neuropipe import blockwise, ops, steps
from neuropipe.config import load_settings
from neuropipe.database import import_datajoint
from neuropipe.errors import BadInputError, TransientError
from neuropipe.io import open_source, parse_bbox, parse_source, read_volume, stored, voxel_size
from neuropipe.io.sources import box_slices, read_part

logger = logging.getLogger(__name__)
dj = import_datajoint()
METADATA_FORMATS = ("zarr", "hdf5", "precomputed", "bossdb")  # sources whose metadata may hold a voxel size
VOXEL_SIZE = ("voxel_z_nm", "voxel_y_nm", "voxel_x_nm")  # the attributes of Dataset that hold its voxel size
schema = dj.Schema()


def _check_source(row: dict) -> None:
    parse_source(row["source"])
    if row.get("bbox"):
        parse_bbox(row["bbox"])


def _with_voxel_size(row: dict) -> dict:
    """Return ``row`` with the voxel size of its source's metadata where the row gives none.

    A source that cannot be opened here (a path only the workers see) keeps the defaults;
    its workers report the real problem in the job table.
    """
    if any(name in row for name in VOXEL_SIZE) or "source" not in row:
        return row
    if parse_source(row["source"]).format not in METADATA_FORMATS:
        return row
    try:
        sizes = voxel_size(row["source"])
    except (BadInputError, TransientError) as error:
        logger.info("voxel size of %s not read from its source: %s", row.get("dataset"), error)
        return row
    return {**row, **dict(zip(VOXEL_SIZE, sizes))} if sizes else row


class CheckedInsert:
    """Mixin that checks rows given as dicts when they are inserted, before anything is stored.

    ``check_row`` (a function of one row that raises ``BadInputError``) checks source URIs and
    bounding boxes unless a table names its own.
    """

    check_row = staticmethod(_check_source)

    def insert(self, rows, **kwargs):
        """Insert rows after checking each one given as a dict (see ``dj.Table.insert``)."""
        if isinstance(rows, (list, tuple)):
            for row in rows:
                if isinstance(row, dict):
                    self.check_row(row)
        super().insert(rows, **kwargs)


@schema
class Dataset(CheckedInsert, dj.Manual):
    """An image volume to process, named by a source URI.

    Attributes
    ----------
    dataset : str
        Short unique name.
    source : str
        Where the image lies: ``file:///path/stack.tif``, ``file://x.npz#image``,
        ``file:///data/img.ome.zarr?resolution=1``, ``file:///data/s.h5#volumes/raw``,
        ``precomputed://gs://bucket/layer`` (see :mod:`neuropipe.io.sources`).
    bbox : str or None
        ``"z0:z1,y0:y1,x0:x1"`` (half-open, ZYX voxels, in the source's coordinates) to cut
        out; None takes everything.  Only this part of a chunked source is ever read.
    voxel_z_nm, voxel_y_nm, voxel_x_nm : float
        Voxel size in nanometres.  Left out at insert, it is taken from the source's
        metadata where it has one (OME-Zarr, precomputed, HDF5 ``resolution``), else 1.
    description : str
    """

    def insert(self, rows, **kwargs):
        """Insert rows, filling voxel sizes they leave out from their sources' metadata."""
        if isinstance(rows, (list, tuple)):
            rows = [_with_voxel_size(row) if isinstance(row, dict) else row for row in rows]
        super().insert(rows, **kwargs)

    definition = """
    dataset : varchar(64)                 # short unique name
    ---
    source : varchar(1024)                # URI of the image volume
    bbox = null : varchar(255)            # "z0:z1,y0:y1,x0:x1" half-open ZYX voxels; null = all
    voxel_z_nm = 1 : float64              # voxel size along z, nm
    voxel_y_nm = 1 : float64              # voxel size along y, nm
    voxel_x_nm = 1 : float64              # voxel size along x, nm
    description = "" : varchar(1024)
    """

    @classmethod
    def voxel_size(cls, key: dict) -> tuple:
        """Return the voxel size of ``key``'s dataset, ZYX nanometres."""
        return tuple((cls & key).fetch1(*VOXEL_SIZE))


@schema
class Annotation(CheckedInsert, dj.Manual):
    """Expert labels of a dataset, registered like the dataset itself.

    Attributes
    ----------
    kind : {'membrane', 'cells'}
        ``membrane``: a mask, nonzero on membrane.  ``cells``: instance labels, 0 on membrane
        and background.  Either kind yields both a membrane mask and cell objects.
    purpose : {'train', 'evaluate'}
        Whether models are trained on these labels or results are scored against them.
    """

    definition = """
    -> Dataset
    ---
    kind : enum('membrane', 'cells')      # what the labels mark
    purpose : enum('train', 'evaluate')   # train models on it, or score results against it
    source : varchar(1024)                # URI of the label volume
    bbox = null : varchar(255)            # as Dataset.bbox; must give the same shape
    min_cell_voxels = 0 : int32           # cells smaller than this are dropped (dust)
    """


@schema
class Volume(dj.Imported):
    """The image of a dataset, imported into the store.

    A volume of up to ``neuropipe.zarr_above_mb`` megabytes (default 256) is kept as one
    ``.npy`` in ``image``; a larger one as a chunked zarr array in ``image_zarr``, copied from
    its source block by block so that neither the import nor a step reading a part of it
    holds the whole volume in memory.  :meth:`open_image` returns either.

    Attributes
    ----------
    image : ndarray (via ``<npy@neuropipe>``) or None
        ZYX voxels of a small volume.
    image_zarr : zarr array (via ``<object@neuropipe>``) or None
        ZYX voxels of a large volume, in chunks of :data:`neuropipe.io.stored.ZARR_CHUNKS`.
    depth, height, width : int
        Shape in voxels.
    """

    definition = """
    -> Dataset
    ---
    image = null : <npy@neuropipe>        # ZYX image, volumes up to neuropipe.zarr_above_mb
    image_zarr = null : <object@neuropipe>  # ZYX image as a chunked zarr array, larger volumes
    depth : int32                         # voxels along z
    height : int32                        # voxels along y
    width : int32                         # voxels along x
    dtype : varchar(16)
    intensity_min : float64
    intensity_max : float64
    intensity_mean : float64
    slice_mean : <blob>                   # intensity mean of each z plane
    slice_std : <blob>                    # and its standard deviation
    """

    @classmethod
    def open_image(cls, key: dict):
        """Return the image of one volume as a ZYX array sliced lazily (numpy or zarr).

        ``numpy.asarray(Volume.open_image(key))`` loads it whole; ``[z0:z1, y0:y1, x0:x1]``
        reads only that part of a zarr-stored volume.
        """
        image, chunked = (cls & key).fetch1("image", "image_zarr")
        return stored.open_stored(chunked if image is None else image)

    def make(self, key):
        """Read the dataset's source (within its bbox), check it and store it."""
        source, bbox = (Dataset & key).fetch1("source", "bbox")
        opened = open_source(source)
        box = box_slices(opened, bbox)
        shape = tuple(piece.stop - piece.start for piece in box)
        if np.prod(shape) * opened.dtype.itemsize <= load_settings().zarr_above_mb * 1e6:
            image = read_part(opened, box, bbox or "the volume")
            self.insert1(_volume_row(key, shape, image.dtype, stored.statistics(image), image=image))
            return
        with self.staged_insert1 as staged:
            staged.rec.update(key)
            target = stored.create_zarr(staged.store("image_zarr", ".zarr"), shape, opened.dtype)
            statistics = stored.copy_in_blocks(
                lambda part: read_part(opened, _shifted(part, box), f"block {part} of {bbox or 'the volume'}"),
                shape, target, progress=lambda done, total, seconds: _log_progress(key, done, total, seconds))
            staged.rec.update(_volume_row(key, shape, opened.dtype, statistics))


def _volume_row(key: dict, shape, dtype, statistics: stored.Statistics, **image) -> dict:
    if statistics.minimum == statistics.maximum:
        raise BadInputError(
            f"dataset {key['dataset']!r}: the volume is constant ({statistics.minimum:g}), nothing to segment."
        )
    depth, height, width = shape
    return dict(key, depth=depth, height=height, width=width, dtype=np.dtype(dtype).name,
                intensity_min=statistics.minimum, intensity_max=statistics.maximum,
                intensity_mean=statistics.mean, slice_mean=statistics.slice_mean, slice_std=statistics.slice_std,
                **image)


def _shifted(part, box):
    return tuple(slice(first.start + piece.start, first.start + piece.stop) for piece, first in zip(part, box))


def _log_progress(key: dict, done: int, total: int, seconds: float) -> None:
    if total >= 10 and done % max(1, total // 10) == 0:
        logger.info("Volume %s: %d of %d blocks imported in %.0f s", key["dataset"], done, total, seconds)


@schema
class Blocking(dj.Lookup):
    """Block shapes that steps cut volumes into (see :mod:`neuropipe.blockwise`).

    A volume within one block is processed whole.  Steps read more halo than ``halo_*`` where
    their computation needs it to give the whole-volume result (the membrane U-Net: a tile).
    Each row multiplies the maps and detections made, so keep one unless comparing.
    """

    definition = blockwise.BLOCKING_DEFINITION
    contents = [("default", 32, 1024, 1024, 0, 0, 0)]


@schema
class VolumeBlocks(blockwise.BlockGrid, dj.Computed):
    """The blocks of a volume under one block shape, one part row each."""

    blocking = Blocking
    definition = """
    -> Volume
    -> Blocking
    ---
    """ + blockwise.GRID_ATTRIBUTES

    class Block(dj.Part):
        """One block: grid coordinates and core box."""

        definition = blockwise.BLOCK_DEFINITION

    def volume_shape(self, key):
        """Return the volume's ZYX extent."""
        return tuple(int(v) for v in (Volume & key).fetch1("depth", "height", "width"))


CELL_PART = """
-> master
cell_id : int32                       # its label in the label volume
---
centroid_z : float64                  # voxels
centroid_y : float64
centroid_x : float64
"""  # how every part table of cells begins: AnnotationVolume.Cell and the detections' (DETECTED_CELL_PART)
DETECTED_CELL_PART = CELL_PART + """
score : float64                       # detector confidence (nuclei: mean predicted nucleus probability of its voxels)
voxel_count : int64
"""  # the part table of the cells of a detection (schemas.detection, schemas.nuclei)


def cell_rows(key: dict, centroids, **columns):
    """Yield the rows of a part table of cells: cell ``i + 1`` at ``centroids[i]``, with ``columns[name][i]``.

    Parameters
    ----------
    key : dict
        The master row's key.
    centroids : array_like of shape (N, 3)
        ZYX voxel coordinates of each cell.
    **columns : array_like of length N
        The other attributes, e.g. ``score`` and ``voxel_count`` of :data:`DETECTED_CELL_PART`.
    """
    for index, (z, y, x) in enumerate(centroids):
        yield dict(key, cell_id=index + 1, centroid_z=z, centroid_y=y, centroid_x=x,
                   **{name: values[index] for name, values in columns.items()})


def centroids(cells) -> np.ndarray:
    """Return the ZYX centroids of a query of a cell part table, as an (N, 3) array."""
    rows = cells.to_arrays("centroid_z", "centroid_y", "centroid_x")
    return np.stack(rows, axis=1) if len(rows[0]) else np.zeros((0, 3))


@schema
class AnnotationVolume(dj.Imported):
    """An annotation imported as a membrane mask plus labelled cells.

    Attributes
    ----------
    membrane : ndarray of bool (via ``<npy@neuropipe>``)
        True on membrane.
    cells : ndarray of uint32 (via ``<npy@neuropipe>``)
        Cell instance labels 1..N, 0 elsewhere: face-connected components, labelled plane by
        plane in serial-section volumes (``ops.label_components`` decides from the voxel size).
    """

    definition = """
    -> Annotation
    -> Volume
    ---
    membrane : <npy@neuropipe>            # bool ZYX, True on membrane
    cells : <npy@neuropipe>               # uint32 ZYX cell labels, 0 = none
    cell_count : int32
    membrane_fraction : float64
    """

    class Cell(dj.Part):
        """One annotated cell (a connected component of the labels)."""

        definition = CELL_PART + """
        voxel_count : int64
        bbox : varchar(255)               # "z0:z1,y0:y1,x0:x1"
        """

    def make(self, key):
        """Read the labels, derive the membrane mask and the cells, and store both."""
        kind, source, bbox, dust = (Annotation & key).fetch1("kind", "source", "bbox", "min_cell_voxels")
        labels = read_volume(source, bbox)
        depth, height, width = (Volume & key).fetch1("depth", "height", "width")
        if labels.shape != (depth, height, width):
            raise BadInputError(
                f"annotation of {key['dataset']!r} has shape {labels.shape}, the volume {(depth, height, width)}."
            )
        membrane = labels != 0 if kind == "membrane" else labels == 0
        cells = ops.label_components(~membrane if kind == "membrane" else labels, connectivity=6, dust=dust,
                                     voxel_size=Dataset.voxel_size(key))
        self.insert1(dict(key, membrane=membrane, cells=cells.labels, cell_count=len(cells.voxel_counts),
                          membrane_fraction=float(membrane.mean())))
        boxes = [_bbox_text(box) for box in np.asarray(cells.bounding_boxes).reshape(-1, 6)]
        self.Cell.insert(list(cell_rows(key, cells.centroids, voxel_count=cells.voxel_counts, bbox=boxes)))


def _bbox_text(box) -> str:
    """Return a (z0, z1, y0, y1, x0, x1) box as ``"z0:z1,y0:y1,x0:x1"``."""
    return ",".join(f"{box[2 * axis]}:{box[2 * axis + 1]}" for axis in range(3))


steps.provide("image", Volume, Volume.open_image)  # what a step's parameter named image reads
steps.provide("voxel_size", Dataset, Dataset.voxel_size, parent=False)  # ZYX nanometres, of every volume
# The annotations say which results are scored, not what they are made from: a step that reads
# one is made for the keys of annotated datasets, its table no child of AnnotationVolume.
steps.provide("annotated_membrane", AnnotationVolume, lambda key: _annotated(key, "membrane"), parent=False)
steps.provide("annotated_labels", AnnotationVolume, lambda key: _annotated(key, "cells"), parent=False)
steps.provide("annotated_cells", AnnotationVolume, lambda key: centroids(AnnotationVolume.Cell & key), parent=False)


def _annotated(key: dict, attribute: str):
    """Return the annotated ``membrane`` mask or cell labels (``cells``) of ``key``'s dataset, sliced lazily."""
    return stored.open_stored((AnnotationVolume & key).fetch1(attribute))
