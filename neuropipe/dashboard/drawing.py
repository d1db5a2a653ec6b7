"""The dashboard's pictures as inline SVG: the pipeline graph and the timeline of jobs by worker.

Drawn on the server from :mod:`.data`'s dicts; every name is escaped (``markupsafe``), so a
table or worker name cannot become markup.
"""

from __future__ import annotations

import hashlib

from markupsafe import Markup, escape

COLOURS = {"done": "#3a9d5d", "pending": "#b8bec6", "running": "#3b7dd8", "error": "#d64545", "ignored": "#d8a83b"}
TIER_FILL = {"manual": "#f4f1e8", "lookup": "#eef2f6", "imported": "#eaf3ec", "computed": "#fbeeee", "table": "#fff"}
NODE_W, NODE_H, GAP_X, GAP_Y = 220, 62, 56, 16


def graph_svg(found: dict) -> Markup:
    """Return the pipeline graph: a box per table, columns by depth, each coloured by its jobs' states."""
    columns: dict = {}
    for node in found["nodes"]:
        columns.setdefault(node["depth"], []).append(node)
    parents: dict = {}
    for parent, child in found["edges"]:
        parents.setdefault(child, []).append(parent)
    where = {}
    for depth in sorted(columns):  # each column ordered by where its parents are: fewer crossings
        placed = sorted(columns[depth], key=lambda node: _mean([where[p][1] for p in parents.get(node["name"], [])
                                                                 if p in where]))
        for row, node in enumerate(placed):
            where[node["name"]] = (10 + depth * (NODE_W + GAP_X), 10 + row * (NODE_H + GAP_Y))
    width = 20 + (max(columns, default=0) + 1) * (NODE_W + GAP_X)
    height = 20 + max((len(nodes) for nodes in columns.values()), default=1) * (NODE_H + GAP_Y)
    parts = [f'<svg class="graph" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}">']
    for parent, child in found["edges"]:
        if parent in where and child in where:
            (x0, y0), (x1, y1) = where[parent], where[child]
            x0, y0, y1 = x0 + NODE_W, y0 + NODE_H / 2, y1 + NODE_H / 2
            middle = (x0 + x1) / 2
            parts.append(f'<path class="edge" d="M{x0},{y0} C{middle},{y0} {middle},{y1} {x1},{y1}" fill="none" '
                         f'stroke="#8a96a3" stroke-width="1.4" />')
    for node in found["nodes"]:
        parts.append(_node(node, *where[node["name"]]))
    parts.append("</svg>")
    return Markup("".join(parts))


def _node(node: dict, x: float, y: float) -> str:
    name = escape(node["name"])
    total = sum(node[state] for state in COLOURS) or 1
    bar, offset = [], 0.0
    for state, colour in COLOURS.items():
        share = (NODE_W - 16) * node[state] / total
        if share > 0:
            bar.append(f'<rect x="{x + 8 + offset:.1f}" y="{y + 44}" width="{share:.1f}" height="9" fill="{colour}">'
                       f'<title>{node[state]} {state}</title></rect>')
            offset += share
    about = {"done": "≈" if node.get("approximate") else ""}
    counts = " · ".join(f'<tspan class="count-{state}" data-count="{node[state]}">{about.get(state, "")}{node[state]} '
                        f'{state}</tspan>' for state in COLOURS if node[state] or state == "done")
    return (f'<a href="/table/{name}" data-table="{name}"><g class="node {escape(node["tier"])}">'
            f'<rect x="{x}" y="{y}" width="{NODE_W}" height="{NODE_H}" rx="6" fill="{TIER_FILL[node["tier"]]}" '
            f'stroke="#8a96a3" /><text x="{x + 8}" y="{y + 17}" font-weight="bold" font-size="13">{name}'
            f'<tspan font-weight="normal" font-size="10" fill="#6b7580"> {escape(node["tier"])}</tspan></text>'
            f'<text x="{x + 8}" y="{y + 35}" font-size="10.5" class="counts">{counts}</text>{"".join(bar)}</g></a>')


def _mean(values) -> float:
    return sum(values) / len(values) if values else 0.0


def timeline_svg(jobs: list[dict], width: int = 1100) -> Markup:
    """Return recent jobs as bars on one row per worker, coloured by table (empty when there are none)."""
    if not jobs:
        return Markup("<p>No job with a provenance record yet.</p>")
    start = min(job["start"] for job in jobs)
    span = max((max(job["end"] for job in jobs) - start).total_seconds(), 1e-3)
    workers = sorted({job["worker"] for job in jobs})
    left, row_height = 170, 22
    height = 30 + len(workers) * row_height
    parts = [f'<svg class="timeline" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">']
    for index, worker in enumerate(workers):
        parts.append(f'<text x="4" y="{24 + index * row_height}" class="worker">{escape(worker)}</text>')
    for job in jobs:
        x = left + (width - left - 10) * (job["start"] - start).total_seconds() / span
        bar = max((width - left - 10) * (job["end"] - job["start"]).total_seconds() / span, 1.5)
        y = 12 + workers.index(job["worker"]) * row_height
        parts.append(f'<rect x="{x:.1f}" y="{y}" width="{bar:.1f}" height="14" fill="{colour_of(job["table"])}">'
                     f'<title>{escape(job["table"])} {job["duration"]:.2f} s, {job["peak_rss_mb"] or 0:.0f} MB'
                     f'</title></rect>')
    parts.append(f'<text x="{left}" y="{height - 2}" class="axis">{escape(f"{start:%H:%M:%S}")}</text>'
                 f'<text x="{width - 10}" y="{height - 2}" class="axis" text-anchor="end">+{span:.1f} s</text></svg>')
    return Markup("".join(parts))


def colour_of(name: str) -> str:
    """Return a stable colour for a table name."""
    hue = int(hashlib.md5(name.encode()).hexdigest()[:4], 16) % 360
    return f"hsl({hue}, 55%, 55%)"
