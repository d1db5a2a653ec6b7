"""The dashboard's web app: Starlette routes rendering Jinja2 templates from :mod:`.data`.

Why these: Starlette is a small, well-kept ASGI toolkit (FastAPI is built on it) served by
uvicorn; pages are rendered on the server by Jinja2 with autoescaping on, so every value from
the database is escaped by default; a few lines of script (``static/live.js``) fetch each live
part of a page again every two seconds and swap it in, so nothing needs a build step or a CDN.

Security: read-only unless the request carries the app's token (a form field, or
``Authorization: Bearer``); compared in constant time; the token is never logged or rendered.
"""

from __future__ import annotations

import hmac
import json
import logging
from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from neuropipe import __version__
from neuropipe.dashboard import actions, data, drawing
from neuropipe.errors import BadInputError
from neuropipe.pipeline import pipeline_tables, table_classes, upstream_first

logger = logging.getLogger(__name__)
REFRESH_MS = 2000


def create_app(modules, token: str | None = None) -> Starlette:
    """Return the dashboard of the pipeline ``modules`` (bound already).

    Parameters
    ----------
    modules : list of modules
        Pipeline modules (``neuropipe.pipeline.load_pipeline``).
    token : str, optional
        What a request must carry to act (retry, ignore, re-queue); None: read-only.
    """
    views = Views(modules, token)
    routes = [
        Route("/", views.graph), Route("/fragment/graph", views.graph_fragment),
        Route("/table/{name}", views.table), Route("/fragment/table/{name}", views.table_fragment),
        Route("/job/{name}", views.job),
        Route("/workers", views.workers), Route("/fragment/workers", views.workers_fragment),
        Route("/timeline", views.timeline), Route("/fragment/timeline", views.timeline_fragment),
        Route("/datasets", views.datasets), Route("/sweeps", views.sweeps),
        Route("/action/{action}", views.preview, methods=["GET"]),
        Route("/action/{action}", views.act, methods=["POST"]),
        Mount("/static", StaticFiles(directory=Path(__file__).parent / "static"), name="static"),
    ]
    return Starlette(routes=routes, exception_handlers={BadInputError: views.bad_input, LookupError: views.not_found})


class Views:
    """The pages and fragments of one dashboard (its pipeline's tables, its token)."""

    def __init__(self, modules, token: str | None):
        self.modules = list(modules)
        self.token = token
        self.classes = upstream_first(list(table_classes(self.modules).values()))
        self.tables = pipeline_tables(self.modules)
        self.by_name = {cls.__name__: cls for cls in self.classes}
        self.templates = Environment(loader=PackageLoader("neuropipe.dashboard", "templates"),
                                     autoescape=select_autoescape(default=True, default_for_string=True))
        self.templates.globals.update(version=__version__, refresh_ms=REFRESH_MS, can_act=token is not None,
                                      json=lambda value: json.dumps(value, sort_keys=True, default=str))

    def render(self, template: str, status_code: int = 200, **values) -> HTMLResponse:
        """Render a template to a response."""
        return HTMLResponse(self.templates.get_template(template).render(**values), status_code=status_code)

    def table_named(self, name: str):
        """Return the table class ``name`` of the pipeline (a LookupError: 404)."""
        if name not in self.by_name:
            raise LookupError(f"no table {name!r} in this pipeline")
        return self.by_name[name]

    async def graph(self, request: Request) -> Response:
        """Render the pipeline graph (its counts kept live)."""
        return self.render("graph.html", page="graph", **self._graph())

    async def graph_fragment(self, request: Request) -> Response:
        """Render the graph's live part."""
        return self.render("graph_live.html", **self._graph())

    def _graph(self) -> dict:
        found = data.graph(self.classes)
        return dict(svg=drawing.graph_svg(found), blocks=found["blocks"], nodes=found["nodes"])

    async def table(self, request: Request) -> Response:
        """Render a table's jobs, filtered and paged."""
        return self.render("table.html", page="table", **self._table(request))

    async def table_fragment(self, request: Request) -> Response:
        """Render the table page's live part."""
        return self.render("table_live.html", **self._table(request))

    def _table(self, request: Request) -> dict:
        table = self.table_named(request.path_params["name"])
        query = request.query_params
        key = {name[2:]: value for name, value in query.items() if name.startswith("k.")}
        page = int(query.get("page", "0")) if query.get("page", "0").isdigit() else 0
        if data.tier(table) in ("manual", "lookup"):
            return dict(table=table.__name__, tier=data.tier(table), rows=data.rows_page(table, key=key, page=page),
                        key=key, query=str(request.url.query), status="", worker="", statuses=())
        found = data.jobs_page(table, status_filter=query.get("status") or None, key=key,
                               worker=query.get("worker") or None, page=page)
        return dict(table=table.__name__, tier=data.tier(table), jobs=found, status=query.get("status", ""),
                    worker=query.get("worker", ""), key=key, query=str(request.url.query),
                    statuses=("pending", "reserved", "success", "error", "ignore"))

    async def job(self, request: Request) -> Response:
        """Render one job: its traceback, earlier attempts and provenance record."""
        table = self.table_named(request.path_params["name"])
        key = _key(request.query_params.get("key", "{}"))
        return self.render("job.html", page="table", detail=data.job_detail(table, key), table=table.__name__)

    async def workers(self, request: Request) -> Response:
        """Render the workers (kept live)."""
        return self.render("workers.html", page="workers", workers=data.workers())

    async def workers_fragment(self, request: Request) -> Response:
        """Render the workers page's live part."""
        return self.render("workers_live.html", workers=data.workers())

    async def timeline(self, request: Request) -> Response:
        """Render recent jobs by worker, and duration and memory per table."""
        return self.render("timeline.html", page="timeline", **self._timeline())

    async def timeline_fragment(self, request: Request) -> Response:
        """Render the timeline's live part."""
        return self.render("timeline_live.html", **self._timeline())

    def _timeline(self) -> dict:
        jobs = data.timeline(self.tables)
        return dict(svg=drawing.timeline_svg(jobs), costs=data.costs(self.tables), failed=data.failed(self.tables))

    async def datasets(self, request: Request) -> Response:
        """Render per dataset the image, membrane map and cells panels and Neuroglancer links (as the report)."""
        from neuropipe.dashboard import results

        return self.render("datasets.html", page="datasets", datasets=results.dataset_panels(self.classes))

    async def sweeps(self, request: Request) -> Response:
        """Render scores against their parameters, per scores table."""
        from neuropipe.dashboard import results

        return self.render("sweeps.html", page="sweeps", sweeps=results.sweep_plots(self.tables))

    async def preview(self, request: Request) -> Response:
        """Show what an action will do, with the form that does it (read-only: say why it cannot)."""
        planned = self._plan(request.path_params["action"], request.query_params)
        return self.render("action.html", page="table", plan=planned, table=planned.table.__name__,
                           key_text=json.dumps(planned.key, sort_keys=True, default=str))

    async def act(self, request: Request) -> Response:
        """Do an action when the request carries the token; else refuse (403), changing nothing."""
        form = await request.form()
        offered = form.get("token") or request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if self.token is None or not offered or not hmac.compare_digest(str(offered), self.token):
            logger.warning("dashboard: refused %s on %s (no valid token)", request.path_params["action"],
                           form.get("table"))
            return self.render("refused.html", status_code=403, page="table", table=form.get("table", ""))
        planned = self._plan(request.path_params["action"], form)
        changed = actions.apply(planned)
        logger.info("dashboard: %s on %s %s: %d changed", planned.action, planned.table.__name__, planned.key, changed)
        return RedirectResponse(f"/table/{planned.table.__name__}?done={planned.action}&changed={changed}",
                                status_code=303)

    def _plan(self, action: str, values) -> actions.Plan:
        table = self.table_named(values.get("table", ""))
        return actions.plan(action, table, self.tables, _key(values.get("key", "{}")))

    async def bad_input(self, request: Request, error: Exception) -> Response:
        """Answer a request that names something wrongly: 400 with the reason."""
        return self.render("error.html", status_code=400, page="", message=str(error))

    async def not_found(self, request: Request, error: Exception) -> Response:
        """Answer a request for a table that is not in the pipeline: 404."""
        return self.render("error.html", status_code=404, page="", message=str(error.args[0] if error.args else error))


def _key(text: str) -> dict:
    try:
        key = json.loads(text or "{}")
    except json.JSONDecodeError:
        raise BadInputError(f"the key must be JSON, e.g. {{\"dataset\": \"stack1\"}}; got {text!r}") from None
    if not isinstance(key, dict):
        raise BadInputError("the key must be a JSON object")
    return key
