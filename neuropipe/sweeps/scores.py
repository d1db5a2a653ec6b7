"""Inserting sweeps, and reading their scores back joined with the parameters that made them."""

from __future__ import annotations

import csv
import json
import math
import re

from neuropipe.errors import BadInputError
from neuropipe.params import ParamSet
from neuropipe.pipeline import table_classes
from neuropipe.sweeps.spec import Sweep


def parameter_tables(modules) -> dict[str, type]:
    """Return the parameter-set tables (:class:`~neuropipe.params.ParamSet`) of ``modules`` by name."""
    return {name: cls for name, cls in table_classes(modules).items() if issubclass(cls, ParamSet)}


def step_tables(modules) -> dict[str, type]:
    """Return the parameter tables of ``modules`` by their own name and by their step's name.

    A step's table (declared by :func:`neuropipe.steps.step`) names its parameter table in
    its ``params_table`` attribute: ``CellDetect`` gives ``CellDetectParams``.
    """
    tables = {}
    for name, cls in table_classes(modules).items():
        params = cls if issubclass(cls, ParamSet) else getattr(cls, "params_table", None)
        if isinstance(params, type) and issubclass(params, ParamSet):
            tables[name] = params
    return tables


def find_table(name: str, tables: dict[str, type]) -> type:
    """Return the parameter table ``name`` names in ``tables``, as given or in CamelCase (``cell_detect``)."""
    camel = "".join(part[:1].upper() + part[1:] for part in re.split("[_-]", str(name)))
    if name in tables or camel in tables:
        return tables[name if name in tables else camel]
    raise BadInputError(f"sweep table {name!r} is neither a parameter table nor a step of the pipeline; "
                        f"known: {', '.join(sorted(tables)) or 'none'}.")


def insert_sweeps(sweeps: list[Sweep], modules) -> list[dict]:
    """Insert every parameter set of ``sweeps`` into its table; nothing else is touched.

    A sweep's ``table`` names a parameter table or a step (:func:`find_table`).  All sets
    are validated (by the table's rules) before any is inserted.

    Returns
    -------
    list of dict
        Per sweep: ``table``, ``sets`` (how many it names), ``new`` (how many were not there yet).
    """
    tables = step_tables(modules)
    plans = []
    for sweep in sweeps:
        table = find_table(sweep.table, tables)
        sets = _unique(sweep.parameter_sets())
        for params in sets:  # raises BadInputError naming the parameter
            _check(table, params)
        plans.append((sweep, table, sets))
    summary = []
    for sweep, table, sets in plans:
        before = len(table())
        for params in sets:
            table.insert_params(params, description=sweep.description)
        summary.append(dict(table=table.__name__, sets=len(sets), new=len(table()) - before))
    return summary


def _check(table, params: dict) -> None:
    from neuropipe.params import check_params

    check_params(params, table.kernel, table.rules, table.__name__, exclude=table.not_params)


def _unique(sets: list[dict]) -> list[dict]:
    seen, kept = set(), []
    for params in sets:
        canonical = json.dumps(params, sort_keys=True, default=str)
        if canonical not in seen:
            seen.add(canonical)
            kept.append(params)
    return kept


def score_rows(table, metric: str, modules, *, lower_is_better: bool | None = None) -> tuple[list[dict], list[str]]:
    """Return ``table``'s rows with their parameters, best ``metric`` first, and the parameter columns.

    Each row holds the table's primary key, the metric, and the parameters of every
    parameter set its key names, as ``<param>`` (or ``<Table>.<param>`` where two tables
    share a name).  ``lower_is_better`` defaults to True for metrics named like errors.
    """
    instance = table()
    if metric not in instance.heading.names:
        numeric = [name for name, attr in instance.heading.attributes.items() if attr.numeric and not attr.in_key]
        raise BadInputError(f"{table.__name__} has no column {metric!r}; its scores: {', '.join(numeric)}.")
    rows = instance.proj(metric).to_dicts()
    columns = _attach_parameters(rows, instance.primary_key, parameter_tables(modules))
    if lower_is_better is None:
        lower_is_better = "error" in metric or "loss" in metric
    rows.sort(key=lambda row: _sortable(row[metric], lower_is_better))
    return rows, columns


def _attach_parameters(rows: list[dict], primary_key, tables: dict) -> list[str]:
    """Add to each row the parameters of the parameter sets its key names; return the columns added."""
    params_by_table = {name: (cls.key_name, {row[cls.key_name]: _as_dict(row["params"])
                                             for row in cls().proj("params").to_dicts()})
                       for name, cls in tables.items() if cls.key_name in primary_key}
    counts: dict = {}
    for _, params in params_by_table.values():
        for name in {p for values in params.values() for p in values}:
            counts[name] = counts.get(name, 0) + 1
    columns: list[str] = []
    for table_name, (key_name, params) in params_by_table.items():
        for row in rows:
            for name, value in params.get(row[key_name], {}).items():
                column = name if counts[name] == 1 else f"{table_name}.{name}"
                row[column] = value
                columns.append(column)
    return list(dict.fromkeys(columns))


def _as_dict(params) -> dict:
    return json.loads(params) if isinstance(params, str) else dict(params)


def _sortable(value, lower_is_better: bool) -> float:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return math.inf
    return float(value) if lower_is_better else -float(value)


def varying(rows: list[dict], columns: list[str]) -> list[str]:
    """Return the parameter columns that take more than one value among ``rows``."""
    return [column for column in columns
            if len({json.dumps(row.get(column), sort_keys=True, default=str) for row in rows}) > 1]


def write_csv(rows: list[dict], path) -> None:
    """Write the score rows to a CSV file (one column per key attribute, metric and parameter)."""
    names = list(dict.fromkeys(name for row in rows for name in row))
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=names)
        writer.writeheader()
        writer.writerows({name: _cell(row.get(name)) for name in names} for row in rows)


def _cell(value):
    return json.dumps(value) if isinstance(value, (dict, list)) else value


def plot_scores(rows: list[dict], metric: str, columns: list[str], path) -> list[str]:
    """Plot ``metric`` against each parameter that varies (one panel each) into an image file.

    Numeric parameters go on a linear axis (log where they span more than two decades);
    others become categories.  Returns the parameters plotted.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = varying(rows, columns) or columns[:1]
    figure, axes = plt.subplots(1, max(len(shown), 1), figsize=(4 * max(len(shown), 1), 3.4), squeeze=False)
    scores = [row[metric] for row in rows]
    for axis, column in zip(axes[0], shown):
        values = [row.get(column) for row in rows]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            axis.scatter(values, scores, s=28, alpha=0.8, color="#1f77b4")
            positive = [v for v in values if v > 0]
            if len(positive) == len(values) and max(values) / min(values) > 100:
                axis.set_xscale("log")
        else:
            labels = sorted({json.dumps(v, default=str) for v in values})
            axis.scatter([labels.index(json.dumps(v, default=str)) for v in values], scores, s=28, alpha=0.8)
            axis.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
        axis.set_xlabel(column)
        axis.set_ylabel(metric)
        axis.grid(alpha=0.3)
    if rows:
        best = rows[0]
        figure.suptitle(f"{metric} over {len(rows)} results (best {best[metric]:.3g})", fontsize=11)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return shown
