"""``neuropipe report``: one self-contained HTML file on the state and results of a pipeline.

It holds per-table progress, a timeline of jobs by worker, duration and memory per table,
failed jobs with their messages, scores against the parameters of sweeps, image panels of
each dataset's middle slice with its membrane map and cells, and Neuroglancer links to what
``neuropipe view`` serves.  Everything is read from the database and the store; the file
needs nothing else to be opened (its images are inline PNGs, its styles inline, no scripts).
"""

from __future__ import annotations

import datetime
import logging
from pathlib import Path

from neuropipe import __version__
from neuropipe.pipeline import classes_around
from neuropipe.reports import collect, html, images, neuroglancer, plots
from neuropipe.reports.results import dataset_results
from neuropipe.worker import status

logger = logging.getLogger(__name__)
MAX_PANELS = 24  # datasets drawn; the links list every one


def write_report(path, tables, *, port: int = neuroglancer.DEFAULT_PORT, host: str = "127.0.0.1",
                 title: str = "neuropipe report") -> Path:
    """Write the report of ``tables`` to ``path``; return the path.

    Parameters
    ----------
    path : str or Path
        The HTML file written (its folder is created).
    tables : list of table classes
        Auto-populated tables, upstream first (:func:`neuropipe.pipeline.pipeline_tables`); the
        worker registry must be bound (``neuropipe report`` does both).
    port, host : int, str
        Where the Neuroglancer links expect ``neuropipe view`` to serve.
    title : str
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    document = html.page(gather(tables, port=port, host=host, title=title))
    path.write_text(document, encoding="utf-8")
    logger.info("report written to %s (%.0f kB)", path, len(document) / 1e3)
    return path


def gather(tables, *, port: int = neuroglancer.DEFAULT_PORT, host: str = "127.0.0.1",
           title: str = "neuropipe report") -> dict:
    """Read and draw everything the report shows; return it as one dict (see :mod:`.html`)."""
    tables = list(tables)
    classes = classes_around(tables)
    records = collect.job_records(tables)
    colours = plots.table_colours([table.__name__ for table in tables])
    score_entries = collect.score_tables(tables, classes)
    for entry in score_entries:
        entry["plot"] = plots.scores(entry)
    results = dataset_results(classes)
    shown = [r for r in results if r.probability is not None or r.labels is not None]
    served_at = neuroglancer.base_url(host, port)
    return dict(
        meta=_meta(tables, title),
        port=port,
        progress=_with_coverage(status.table_progress(tables), collect.record_coverage(tables)),
        blocks=status.block_progress(tables),
        errors=status.failed_jobs(tables, tracebacks=True),
        workers=collect.worker_summary(records),
        clock=records[0]["clock"] if records else "UTC",
        timeline_plot=plots.timeline(records, colours),
        resources=collect.resource_summary(records),
        resources_plot=plots.resources(records, colours),
        scores=score_entries,
        panels=[dict(result=r, plot=images.panel(r, classes), link=viewer_link(served_at, r))
                for r in shown[:MAX_PANELS]],
        panels_left_out=max(0, len(shown) - MAX_PANELS),
        links=[dict(result=r, layers=layers_of(r), link=viewer_link(served_at, r)) for r in results],
    )


def _with_coverage(progress: list[dict], no_record: dict) -> list[dict]:
    return [dict(row, no_record=no_record.get(row["table"], 0)) for row in progress]


def layers_of(result) -> list[str]:
    """Return the layers a dataset's result has for a viewer: the image, and its map and labels where made."""
    return ["image"] + [name for name in ("probability", "labels") if getattr(result, name) is not None]


def viewer_link(served_at: str, result) -> str:
    """Return the Neuroglancer link of a dataset's result, as ``neuropipe view`` serves it at ``served_at``."""
    return neuroglancer.link(served_at, result.dataset, layers_of(result), result.shape, result.voxel_size)


def _meta(tables, title: str) -> dict:
    connection = tables[0].connection if tables else None
    info = getattr(connection, "conn_info", None) or {}
    backend = type(getattr(connection, "adapter", None)).__name__.replace("Adapter", "")
    database = f"{info.get('host', '?')}:{info.get('port', '?')} {backend}".strip() if connection else "no database"
    now = datetime.datetime.now(datetime.timezone.utc)
    return dict(title=title, generated=f"{now:%Y-%m-%d %H:%M:%S} UTC", database=database, version=__version__,
                schemas=sorted({table.database for table in tables}))
