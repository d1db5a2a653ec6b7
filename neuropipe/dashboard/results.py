"""The dashboard's result views, drawn as the report draws them: dataset panels and sweep plots.

A dataset's panel (its middle slice, membrane map and cells) is drawn once per state of its
rows and kept, since drawing takes a fraction of a second and the rows rarely change.
"""

from __future__ import annotations

from neuropipe.pipeline import classes_around
from neuropipe.reports import images, neuroglancer, plots
from neuropipe.reports.collect import score_tables
from neuropipe.reports.report import layers_of, viewer_link
from neuropipe.reports.results import dataset_results

_PANELS: dict = {}  # (dataset, what it holds) -> PNG data URI


def dataset_panels(classes, limit: int = 24) -> list[dict]:
    """Return per dataset with a result: ``dataset``, ``layers``, ``link`` (Neuroglancer) and ``plot``."""
    around = {cls.__name__: cls for cls in classes}
    served_at = neuroglancer.base_url()
    found = []
    for result in dataset_results(around)[:limit]:
        layers = layers_of(result)
        plot = None
        if len(layers) > 1:
            state = (result.dataset, repr(result))
            if state not in _PANELS:
                _PANELS[state] = images.panel(result, around)
            plot = _PANELS[state]
        found.append(dict(dataset=result.dataset, layers=layers, link=viewer_link(served_at, result), plot=plot))
    return found


def sweep_plots(tables) -> list[dict]:
    """Return per scores table its rows with their parameters and the plot of each score against them."""
    entries = score_tables(tables, classes_around(tables))
    for entry in entries:
        entry["plot"] = plots.scores(entry)
    return entries
