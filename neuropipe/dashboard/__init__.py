"""``neuropipe dashboard``: a live web view of a pipeline, read from its database.

- :mod:`~neuropipe.dashboard.data` -- what the views show (graph counts, jobs, workers,
  timeline, costs, failures), paged and aggregated on the server;
- :mod:`~neuropipe.dashboard.drawing` -- the graph and the timeline as inline SVG;
- :mod:`~neuropipe.dashboard.results` -- dataset panels and sweep plots, drawn as the report does;
- :mod:`~neuropipe.dashboard.actions` -- retry, ignore, re-queue stale rows, each planned and
  shown before it is done;
- :mod:`~neuropipe.dashboard.app` -- the Starlette routes and Jinja2 templates.
"""
