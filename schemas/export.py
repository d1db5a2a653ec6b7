"""Results pushed back where the data lives, as jobs of the graph.

A scientist names a destination in :class:`ExportTarget` (a Boss channel, a precomputed layer
or a zarr array, for one dataset, holding probability maps or cell labels); workers then fill
:class:`ProbabilityExport` and :class:`LabelExport` like any other table: each upload is a job,
retried when it fails, recorded in the job table, and its row says what went where.

A target URI may hold fields of the exported row's key in braces, so that one target takes
every result of a dataset without two writing to the same place::

    ExportTarget.insert1(dict(dataset="kasthuri", target="maps", content="probability",
                              uri="bossdb://lab/kasthuri/membrane_{inference_id}"))
"""

import string
import time

import numpy as np

from neuropipe.database import import_datajoint
from neuropipe.errors import BadInputError
from neuropipe.io import open_source, parse_bbox, parse_source
from neuropipe.io.contents import CONTENTS
from neuropipe.io.stored import open_stored
from neuropipe.io.targets import write_volume
from neuropipe.io.uri import parse_target
from schemas.detection import CellDetection
from schemas.membrane import MembraneMap
from schemas.volume import CheckedInsert, Dataset

dj = import_datajoint()
schema = dj.Schema()

KEY_FIELDS = {  # the fields a target URI of each content may name in braces
    "probability": ("dataset", "target", "training_dataset", "training_id", "inference_id"),
    "labels": ("dataset", "target", "training_dataset", "training_id", "inference_id", "detection_id"),
}


@schema
class ExportTarget(CheckedInsert, dj.Manual):
    """Where one kind of result of a dataset is written back.

    Attributes
    ----------
    content : {'probability', 'labels'}
        Membrane probability maps (:class:`~schemas.membrane.MembraneMap`) or the labels of
        detected cells (:class:`~schemas.detection.CellDetection`).
    uri : str
        ``bossdb://collection/experiment/channel``, ``precomputed://file:///...`` (gs://, s3://)
        or ``file:///....zarr#path``; ``{inference_id}`` and other key fields are filled in per
        result (see :data:`KEY_FIELDS`).  See :mod:`neuropipe.io.targets`.
    create : bool
        Create the channel, layer or array where it is missing; otherwise that is an error.
    """

    definition = """
    -> Dataset
    target : varchar(64)                  # short name of this destination
    ---
    content : enum('probability', 'labels')  # which results go there
    uri : varchar(1024)                   # bossdb://, precomputed:// or .zarr; may hold {key fields}
    create = 1 : bool                     # create the channel, layer or array where missing
    description = "" : varchar(1024)
    """

    def check_row(self, row: dict) -> None:
        """Check, at insert, that a row's URI can be written and names only known key fields."""
        _check_target(row)


def _check_target(row: dict) -> None:
    content, uri = row.get("content"), row.get("uri")
    if content not in CONTENTS:
        raise BadInputError(f"export target {row.get('target')!r}: content must be one of {', '.join(CONTENTS)}, "
                            f"got {content!r}.")
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(uri or "") if name is not None]
    except ValueError as error:
        raise BadInputError(f"export target {row.get('target')!r}: uri {uri!r} has unbalanced braces "
                            f"({error}).") from None
    unknown = sorted(set(names) - set(KEY_FIELDS[content]))
    if unknown:
        raise BadInputError(f"export target {row.get('target')!r}: uri {uri!r} names {', '.join(unknown)}; "
                            f"a {content} target may name {', '.join(KEY_FIELDS[content])}.")
    parse_target(_filled(uri, {name: "x" for name in KEY_FIELDS[content]}))


def _filled(uri: str, key: dict) -> str:
    return uri.format(**{name: key[name] for name in KEY_FIELDS["labels"] if name in key})


class _Export:
    """Write one result attribute to a target: the recipe both export tables share."""

    content: str
    result: type
    attribute: str

    definition_tail = """
    ---
    uri : varchar(1024)                   # where it was written (the target's uri filled in)
    dtype : varchar(16)                   # as written
    megabytes : float64                   # written, uncompressed
    seconds : float64                     # spent writing
    """

    def make(self, key):
        """Fetch the result, write it to the target at the dataset's box, record what went where."""
        uri, create = (ExportTarget & key).fetch1("uri", "create")
        uri = _filled(uri, key)
        self._refuse_a_place_taken(key, uri)
        array = np.asarray(open_stored((self.result & key).fetch1(self.attribute)))
        dataset = (Dataset & key).fetch1()
        started = time.monotonic()
        written = write_volume(uri, array, content=self.content, offset_zyx=_dataset_origin(dataset),
                               voxel_size_nm=Dataset.voxel_size(key), create=bool(create),
                               **_boss_sources(dataset, uri))
        self.insert1(dict(key, uri=written.uri, dtype=written.dtype, megabytes=written.nbytes / 1e6,
                          seconds=time.monotonic() - started))

    @property
    def key_source(self):
        """Every result of a dataset, under each of the dataset's targets of its content."""
        return self.result.proj() * (ExportTarget & {"content": self.content}).proj()

    def _refuse_a_place_taken(self, key: dict, uri: str) -> None:
        # Plain SQL: inside make() DataJoint shows each table only as far as this key's upstream.
        quote = self.connection.adapter.quote_identifier
        names = ", ".join(quote(name) for name in self.primary_key)
        other = self.connection.query(f"SELECT {names} FROM {self.full_table_name} WHERE {quote('uri')} = %s",
                                      args=(uri,)).fetchone()
        if other:
            raise BadInputError(f"export to {uri!r}: that place already holds the export of "
                                f"{dict(zip(self.primary_key, other))}; put {{inference_id}} (or another key field) "
                                "in the target's uri.")


@schema
class ProbabilityExport(_Export, dj.Computed):
    """A membrane probability map written to a target (scaled to 0..255 in a uint8 Boss channel)."""

    content, result, attribute = "probability", MembraneMap, "probability"
    definition = """
    -> MembraneMap
    -> ExportTarget
    """ + _Export.definition_tail


@schema
class LabelExport(_Export, dj.Computed):
    """The labels of detected cells written to a target (a uint64 annotation channel on a Boss)."""

    content, result, attribute = "labels", CellDetection, "labels"
    definition = """
    -> CellDetection
    -> ExportTarget
    """ + _Export.definition_tail


def _dataset_origin(dataset: dict) -> tuple:
    """Where the dataset's volume begins in its source's voxel coordinates (ZYX)."""
    if dataset["bbox"]:
        return tuple(start for start, _ in parse_bbox(dataset["bbox"]))
    return tuple(open_source(dataset["source"]).origin)


def _boss_sources(dataset: dict, uri: str) -> dict:
    """Name the dataset's own channel as the source of a new annotation channel in the same experiment."""
    target, source = parse_target(uri), parse_source(dataset["source"])
    if target.format == source.format == "bossdb" and target.path.parts[:2] == source.path.parts[:2]:
        return {"sources": [source.path.parts[2]]}
    return {}
