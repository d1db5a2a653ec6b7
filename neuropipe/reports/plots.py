"""Charts of a report, drawn with matplotlib's Agg canvas and returned as inline PNG data URIs.

Figures are made with :class:`matplotlib.figure.Figure` directly, not ``pyplot``: nothing
global (the backend of a notebook that imports this) is touched.
"""

from __future__ import annotations

import base64
import io
import json

import numpy as np

SCORE_LABELS = {"f1": "F1", "pixel_error": "pixel error", "adapted_rand_error": "adapted Rand error"}
RESOURCE_LABELS = {"duration": "wall time per job (s)", "cpu_seconds": "CPU time per job (s)",
                   "peak_rss_mb": "peak resident memory (MB)"}
MAX_WORKERS = 40  # rows of the timeline; the busiest are kept
MAX_PARAMETERS = 6  # columns of a score figure


def figure(width: float, height: float):
    """Return a new figure with a constrained layout (no pyplot)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def data_uri(fig) -> str:
    """Render ``fig`` as a PNG ``data:`` URI."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", facecolor="white")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def table_colours(names) -> dict:
    """Return a colour per table name, stable for the order given."""
    from matplotlib import colormaps

    palette = colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {name: palette(index % palette.N) for index, name in enumerate(names)}


def timeline(records, colours: dict) -> str | None:
    """Draw a Gantt chart of ``records``: one row per worker, one bar per job, a colour per table.

    Jobs shorter than 0.4% of the span are drawn that wide, so that they show.
    """
    if not records:
        return None
    from matplotlib.patches import Patch

    origin = min(r["start"] for r in records)
    first = {}
    for record in sorted(records, key=lambda r: r["start"]):
        first.setdefault(record["worker"], record["start"])
    workers = sorted(first, key=first.get)
    if len(workers) > MAX_WORKERS:
        counts = {w: sum(r["worker"] == w for r in records) for w in workers}
        workers = sorted(sorted(workers, key=lambda w: -counts[w])[:MAX_WORKERS], key=first.get)
    span = max((r["end"] - origin).total_seconds() for r in records) or 1.0
    fig = figure(11, 1.6 + 0.42 * len(workers))
    axes = fig.add_subplot()
    for row, worker in enumerate(workers):
        for table, colour in colours.items():
            bars = [((r["start"] - origin).total_seconds(), max((r["end"] - r["start"]).total_seconds(), span * 0.004))
                    for r in records if r["worker"] == worker and r["table"] == table]
            if bars:
                axes.broken_barh(bars, (row - 0.38, 0.76), facecolors=colour, edgecolor="white", linewidth=0.4)
    axes.set_yticks(range(len(workers)), workers, fontsize=8)
    axes.set_ylim(len(workers) - 0.5, -0.5)
    axes.set_xlim(0, span * 1.01)
    axes.set_xlabel(f"seconds since {origin:%Y-%m-%d %H:%M:%S} ({records[0].get('clock', 'UTC')})")
    axes.set_ylabel("worker (host:pid)")
    axes.set_title(f"Jobs by worker: {len(records)} jobs on {len(first)} worker(s)")
    axes.grid(axis="x", alpha=0.3)
    used = [t for t in colours if any(r["table"] == t for r in records)]
    axes.legend(handles=[Patch(color=colours[t], label=t) for t in used], loc="upper left", bbox_to_anchor=(1.01, 1),
                fontsize=8, frameon=False, title="table", title_fontsize=8)
    return data_uri(fig)


def resources(records, colours: dict) -> str | None:
    """Draw per-table distributions of wall time, CPU time and peak memory (box plots and the jobs)."""
    columns = [name for name in RESOURCE_LABELS if any(r.get(name) is not None for r in records)]
    tables = [t for t in colours if any(r["table"] == t for r in records)]
    if not columns or not tables:
        return None
    fig = figure(11, 1.5 + 0.45 * len(tables))
    panels = fig.subplots(1, len(columns), sharey=True, squeeze=False)[0]
    rng = np.random.default_rng(0)
    for axes, column in zip(panels, columns):
        for row, table in enumerate(tables):
            values = np.array([r[column] for r in records if r["table"] == table and r[column] is not None], float)
            if not len(values):
                continue
            axes.boxplot(values, positions=[row], widths=0.55, showfliers=False, **_horizontal(),
                         medianprops=dict(color="black"), boxprops=dict(color="0.35"), whiskerprops=dict(color="0.35"),
                         capprops=dict(color="0.35"))
            jitter = rng.uniform(-0.18, 0.18, len(values))
            axes.scatter(values, row + jitter, s=10, color=colours[table], alpha=0.75, zorder=3, linewidths=0)
        axes.set_xlabel(RESOURCE_LABELS[column])
        positive = [r[column] for r in records if r.get(column)]
        if positive and min(positive) > 0 and max(positive) / min(positive) > 50:
            axes.set_xscale("log")
        axes.grid(axis="x", alpha=0.3)
    panels[0].set_yticks(range(len(tables)), tables, fontsize=8)
    panels[0].set_ylim(len(tables) - 0.5, -0.5)
    fig.suptitle("Job duration and memory per table (one point per job)")
    return data_uri(fig)


def _horizontal() -> dict:
    import matplotlib

    major, minor = (int(part) for part in matplotlib.__version__.split(".")[:2])
    return {"orientation": "horizontal"} if (major, minor) >= (3, 10) else {"vert": False}


def scores(entry: dict) -> str | None:
    """Draw each score of a metrics table against each parameter that varies across its rows.

    One row of panels per score, one column per varying parameter; with no parameter varying
    (one parameter set) one row, a panel per score, by dataset.
    """
    rows = entry["rows"]
    if not rows:
        return None
    from matplotlib import colormaps

    datasets = sorted({row["dataset"] for row in rows})
    palette = colormaps["tab10"]
    colour = {name: palette(index % 10) for index, name in enumerate(datasets)}
    parameters = entry["varying"][:MAX_PARAMETERS]
    if parameters:
        cells = [(i, j, score, parameter) for i, score in enumerate(entry["scores"])
                 for j, parameter in enumerate(parameters)]
    else:
        cells = [(0, j, score, None) for j, score in enumerate(entry["scores"])]
    shape = (max(c[0] for c in cells) + 1, max(c[1] for c in cells) + 1)
    fig = figure(min(3.4 * shape[1] + 1.8, 16), 0.6 + 2.6 * shape[0])
    grid = fig.subplots(*shape, squeeze=False)
    for i, j, score, parameter in cells:
        axes = grid[i][j]
        _score_panel(axes, rows, score, parameter, datasets, colour, connect=len(parameters) == 1)
        if j == 0 or not parameters:
            axes.set_ylabel(SCORE_LABELS.get(score, score))
        if i == shape[0] - 1:
            axes.set_xlabel(parameter or "dataset")
    grid[0][-1].legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=8, frameon=False, title="dataset",
                       title_fontsize=8)
    what = "against the parameters that vary" if parameters else "per dataset (one parameter set)"
    fig.suptitle(f"{entry['table']}: scores {what}")
    return data_uri(fig)


def _score_panel(axes, rows, score, parameter, datasets, colour, *, connect: bool) -> None:
    values = [row.get(parameter) if parameter else row["dataset"] for row in rows]
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if numeric:
        positions = [float(v) for v in values]
    else:
        labels = sorted({_label(v) for v in values})
        positions = [labels.index(_label(v)) for v in values]
        axes.set_xticks(range(len(labels)), labels, fontsize=8, rotation=20 if len(labels) > 3 else 0)
        axes.set_xlim(-0.6, len(labels) - 0.4)
    for dataset in datasets:
        mine = sorted((x, row[score]) for x, row in zip(positions, rows) if row["dataset"] == dataset)
        xs, ys = [x for x, _ in mine], [y for _, y in mine]
        axes.scatter(xs, ys, s=28, color=colour[dataset], label=dataset, zorder=3)
        if connect and numeric and len(xs) > 1:
            axes.plot(xs, ys, color=colour[dataset], alpha=0.5, linewidth=1)
    axes.grid(alpha=0.3)
    highest = max(row[score] for row in rows)
    axes.set_ylim(0, 1.02 if score == "f1" else max(highest * 1.15, 1e-3))  # scores are fractions


def _label(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)
