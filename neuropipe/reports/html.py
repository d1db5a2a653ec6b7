"""The report's HTML: one file, its styles inline, its images ``data:`` URIs, no scripts, nothing fetched."""

from __future__ import annotations

import html
import json

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", "DejaVu Sans", Arial, sans-serif; margin: 0;
       color: #1d2330; background: #f5f6f8; }
header { background: #1d2330; color: #fff; padding: 18px 32px; }
header h1 { margin: 0 0 4px 0; font-size: 22px; }
header p { margin: 2px 0; color: #c8cdd8; font-size: 13px; }
nav { padding: 8px 32px; background: #e6e9ef; font-size: 14px; position: sticky; top: 0; }
nav a { margin-right: 18px; color: #24509a; text-decoration: none; }
main { padding: 8px 32px 40px 32px; }
section { background: #fff; border-radius: 6px; padding: 4px 20px 16px 20px; margin: 18px 0;
          box-shadow: 0 1px 3px rgba(0,0,0,.08); }
h2 { font-size: 18px; border-bottom: 1px solid #e1e4ea; padding-bottom: 6px; }
h3 { font-size: 15px; margin-bottom: 6px; }
table { border-collapse: collapse; font-size: 13px; margin: 6px 0 10px 0; }
th, td { padding: 4px 10px; border-bottom: 1px solid #eceef2; text-align: left; vertical-align: top; }
th { background: #f0f2f5; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.bar { display: flex; width: 220px; height: 12px; border-radius: 3px; overflow: hidden; background: #eceef2; }
.bar span { display: block; height: 100%; }
.done { background: #3a9d5d; } .pending { background: #c9ced8; } .running { background: #3b7dd8; }
.error { background: #d64541; } .ignored { background: #e3b341; }
.legend span { display: inline-block; width: 10px; height: 10px; margin: 0 4px 0 12px; border-radius: 2px; }
img.plot { max-width: 100%; height: auto; display: block; margin: 8px 0; }
.note { color: #5b6373; font-size: 13px; }
code, pre { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 12px; }
pre { background: #f5f6f8; padding: 8px; overflow-x: auto; max-height: 260px; }
td.message { max-width: 560px; white-space: pre-wrap; word-break: break-word; }
td.nowrap { white-space: nowrap; }
"""

SECTIONS = (("progress", "Progress"), ("timeline", "Timeline"), ("resources", "Duration and memory"),
            ("errors", "Errors"), ("scores", "Scores"), ("images", "Images"), ("neuroglancer", "Neuroglancer"))


def esc(value) -> str:
    """Escape a value for HTML text or attributes."""
    return html.escape(str(value), quote=True)


def page(report: dict) -> str:
    """Return the whole HTML document of a report (see :func:`neuropipe.reports.report.gather`)."""
    meta = report["meta"]
    nav = "".join(f'<a href="#{key}">{title}</a>' for key, title in SECTIONS)
    body = "".join(section(report) for section in (progress, timeline, resources, errors, scores, images, links))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>{esc(meta['title'])}</title>
<style>{STYLE}</style></head>
<body><header><h1>{esc(meta['title'])}</h1>
<p>generated {esc(meta['generated'])} &middot; {esc(meta['database'])} &middot; neuropipe {esc(meta['version'])}</p>
<p>schemas: {esc(', '.join(meta['schemas']) or 'none')} &middot; {len(report['progress'])} table(s)</p></header>
<nav>{nav}</nav><main>{body}</main></body></html>
"""


def _section(key: str, content: str) -> str:
    return f'<section id="{key}"><h2>{dict(SECTIONS)[key]}</h2>{content}</section>'


def _table(headers, rows, numeric=()) -> str:
    head = "".join(f'<th class="num">{esc(h)}</th>' if h in numeric else f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(cells) + "</tr>" for cells in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _td(value, numeric: bool = False, css: str = "") -> str:
    classes = " ".join(filter(None, ["num" if numeric else "", css]))
    return f'<td class="{classes}">{esc(value)}</td>' if classes else f"<td>{esc(value)}</td>"


def _number(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _img(uri: str | None, alt: str) -> str:
    return f'<img class="plot" src="{uri}" alt="{esc(alt)}">' if uri else ""


def progress(report: dict) -> str:
    """Per table: rows done, jobs pending, running and failed, as numbers and a bar; blocks per dataset."""
    states = ("done", "pending", "running", "error", "ignored")
    rows = []
    for row in report["progress"]:
        total = sum(row[s] for s in states) or 1
        bar = "".join(f'<span class="{s}" style="width:{100 * row[s] / total:.2f}%"></span>' for s in states if row[s])
        rows.append([_td(row["table"])] + [_td(row[s], True) for s in states]
                    + [f'<td><div class="bar">{bar}</div></td>', _td(" ".join(row["workers"]) or "-"),
                       _td(row["no_record"], True)])
    legend = "".join(f'<span class="{s}"></span>{s}' for s in states)
    unrecorded = sum(row["no_record"] for row in report["progress"])
    content = (_table(["table", *states, "", "running on", "no record"], rows, numeric=(*states, "no record"))
               + f'<p class="legend note">{legend}</p>'
               + (f'<p class="note">{unrecorded} row(s) have no provenance record of their own (made outside a '
                  "neuropipe worker, by one run with <code>--no-provenance</code>, or made again since): no code, "
                  "parameters or worker can be shown for them; <code>neuropipe stale</code> lists them.</p>"
                  if unrecorded else ""))
    if report["blocks"]:
        block_rows = [[_td(b["table"]), _td(b["dataset"]), _td(f"{b['done']}/{b['total']}", True),
                       _td(b["pending"], True), _td(b["running"], True), _td(b["error"], True)]
                      for b in report["blocks"]]
        content += "<h3>Blocks</h3>" + _table(["table", "dataset", "done", "pending", "running", "error"], block_rows,
                                              numeric=("done", "pending", "running", "error"))
    return _section("progress", content)


def timeline(report: dict) -> str:
    """Render the Gantt chart of jobs by worker, and each worker's jobs and busy time."""
    if not report["workers"]:
        return _section("timeline", '<p class="note">No jobs have been done yet.</p>')
    rows = [[_td(w["worker"]), _td(w["jobs"], True), _td(f"{w['busy']:.2f}", True),
             _td(f"{w['first']:%Y-%m-%d %H:%M:%S}", css="nowrap"), _td(f"{w['last']:%Y-%m-%d %H:%M:%S}", css="nowrap"),
             _td(", ".join(w["tables"]))]
            for w in report["workers"]]
    source = ("provenance records (worker clocks, UTC)" if report["clock"] == "UTC"
              else "job tables (server clock; no provenance records)")
    content = (_img(report["timeline_plot"], "jobs by worker") + f'<p class="note">From {source}.</p>'
               + _table(["worker", "jobs", "busy (s)", "first start", "last end", "tables"], rows,
                        numeric=("jobs", "busy (s)")))
    return _section("timeline", content)


def resources(report: dict) -> str:
    """Per table: distributions of wall time, CPU time and peak memory, and their medians and maxima."""
    if not report["resources"]:
        return _section("resources", '<p class="note">No jobs have been done yet.</p>')

    def pair(value, digits):
        return "-" if value is None else f"{value[0]:.{digits}f} / {value[1]:.{digits}f}"

    rows = [[_td(r["table"]), _td(r["jobs"], True), _td(pair(r["duration"], 3), True),
             _td(pair(r["cpu_seconds"], 3), True), _td(pair(r["peak_rss_mb"], 1), True)] for r in report["resources"]]
    headers = ["table", "jobs", "wall s (median / max)", "CPU s (median / max)", "peak RSS MB (median / max)"]
    return _section("resources", _img(report["resources_plot"], "duration and memory per table")
                    + _table(headers, rows, numeric=headers[1:]))


def errors(report: dict) -> str:
    """Failed jobs: table, key, message, attempts, worker, time, and the traceback folded."""
    if not report["errors"]:
        return _section("errors", '<p class="note">No failed jobs.</p>')
    rows = []
    for job in report["errors"]:
        trace = (f"<details><summary>traceback</summary><pre>{esc(job['traceback'])}</pre></details>"
                 if job.get("traceback") else "")
        rows.append([_td(job["table"]), f"<td><code>{esc(json.dumps(job['key'], default=str))}</code></td>",
                     f'<td class="message">{esc(job["message"])}{trace}</td>', _td(job["attempts"], True),
                     _td(job["worker"]), _td(f"{job['when']:%Y-%m-%d %H:%M:%S}" if job["when"] else "-", css="nowrap")])
    content = (f'<p class="note">{len(report["errors"])} failed job(s); <code>neuropipe retry</code> '
               "re-queues them.</p>" + _table(["table", "key", "message", "attempts", "worker", "when"], rows,
                                              numeric=("attempts",)))
    return _section("errors", content)


def scores(report: dict) -> str:
    """Per metrics table: its scores against the parameters that vary, the rows, the parameters held fixed."""
    if not report["scores"]:
        return _section("scores", '<p class="note">No scores yet (no metrics rows).</p>')
    content = ""
    for entry in report["scores"]:
        varying = entry["varying"]
        headers = ["dataset", *varying, *entry["scores"]]
        rows = [[_td(row["dataset"])] + [_td(_number(row.get(p), 4)) for p in varying]
                + [_td(_number(row[s]), True) for s in entry["scores"]] for row in entry["rows"]]
        fixed = ", ".join(f"{name}={json.dumps(value, default=str)}" for name, value in entry["fixed"].items())
        content += (f"<h3>{esc(entry['table'])} ({len(entry['rows'])} rows)</h3>" + _img(entry["plot"], entry["table"])
                    + _table(headers, rows, numeric=entry["scores"])
                    + (f'<p class="note">Same in every row: <code>{esc(fixed)}</code></p>' if fixed else ""))
    return _section("scores", content)


def images(report: dict) -> str:
    """Per dataset with a membrane map or detections: the middle slice, the map and the cells, where made."""
    if not report["panels"]:
        return _section("images", '<p class="note">No dataset has a membrane map or detections yet.</p>')
    content = ""
    for item in report["panels"]:
        result = item["result"]
        score = f", detection F1 {result.f1:.3f}" if result.f1 is not None else ""
        found = (f"{result.cell_count} cells detected ({esc(result.detection_table)}){esc(score)}; detection "
                 f"<code>{esc(json.dumps(result.labels, default=str))}</code>. " if result.labels is not None
                 else "No detection yet. ")
        content += (f"<h3>{esc(result.dataset)}</h3>" + _img(item["plot"], f"{result.dataset} slices")
                    + f'<p class="note">{found}<a href="{esc(item["link"])}">Open in Neuroglancer</a> (with '
                    f"<code>neuropipe view {esc(result.dataset)}</code> running).</p>")
    if report["panels_left_out"]:
        content += f'<p class="note">{report["panels_left_out"]} more dataset(s) left out.</p>'
    return _section("images", content)


def links(report: dict) -> str:
    """List a Neuroglancer link per imported volume, with its map and cells where it has them."""
    if not report["links"]:
        return _section("neuroglancer", '<p class="note">No volumes imported yet.</p>')
    rows = [[_td(item["result"].dataset), _td(" x ".join(map(str, item["result"].shape))),
             _td(", ".join(item["layers"])), f'<td><a href="{esc(item["link"])}">open</a></td>',
             f"<td><code>neuropipe view {esc(item['result'].dataset)} --port {report['port']}</code></td>"]
            for item in report["links"]]
    content = ('<p class="note">The links open Neuroglancer (from the network) on layers served from this '
               f"machine by <code>neuropipe view DATASET</code> on port {report['port']}.</p>"
               + _table(["dataset", "shape (z x y x x)", "layers", "link", "serve with"], rows))
    return _section("neuroglancer", content)
