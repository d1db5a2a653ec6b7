"""The ``neuropipe`` command line: a thin layer over the package's functions."""

from __future__ import annotations

import argparse
import logging
import sys

from neuropipe.config import load_settings
from neuropipe.errors import ConfigurationError, NeuropipeError

logger = logging.getLogger("neuropipe")


def main(argv=None) -> int:
    """Run the ``neuropipe`` command; return its exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(name)s %(levelname)s: %(message)s", datefmt="%H:%M:%S",
                        level=logging.WARNING)
    logging.getLogger("neuropipe").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    datajoint_logger = logging.getLogger("datajoint")  # it has a handler of its own
    datajoint_logger.propagate = False
    datajoint_logger.setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    try:
        return args.command(args) or 0
    except NeuropipeError as error:
        print(f"neuropipe: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="neuropipe", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="run the whole chain on a sample (or your) volume")
    demo.add_argument("--source", help="image URI, e.g. file:///data/stack.npz#image (default: synthetic sample)")
    demo.add_argument("--labels", help="expert labels URI, e.g. file:///data/stack.npz#membrane")
    demo.add_argument("--labels-kind", choices=("membrane", "cells"), default="membrane")
    demo.add_argument("--name", help="dataset name prefix (default: the source file's stem)")
    demo.add_argument("--voxel-size", type=float, nargs=3, metavar=("Z", "Y", "X"), default=(1.0, 1.0, 1.0),
                      help="voxel size in nm, ZYX")
    demo.add_argument("--train-fraction", type=float, default=2 / 3,
                      help="fraction of z planes to train on; the rest are held out (default 2/3)")
    demo.add_argument("--minutes", type=float, help="training time budget (default: 0.5 sample, 2 real data)")
    demo.set_defaults(command=_demo)

    worker = commands.add_parser("worker", help="populate the pipeline's tables until stopped")
    worker.add_argument("--pipeline", action="append", metavar="MODULE",
                        help="importable module of tables to serve (repeatable; default: schemas)")
    worker.add_argument("--max-idle", type=float, help="exit 0 after this many seconds without work")
    worker.add_argument("--max-jobs", type=int, help="exit after this many jobs")
    worker.add_argument("--poll", type=float, default=5.0, help="seconds between looks for new work")
    worker.set_defaults(command=_worker)

    status = commands.add_parser("status", help="per table: done, pending, reserved, error")
    status.add_argument("--pipeline", action="append", metavar="MODULE")
    status.set_defaults(command=_status)

    database = commands.add_parser("db", help="the embedded PostgreSQL server: start, stop, status")
    database.add_argument("action", choices=("start", "stop", "status"))
    database.set_defaults(command=_db)
    return parser


def _demo(args) -> int:
    from neuropipe import demo

    settings = load_settings()
    if args.source and not args.labels:
        raise ConfigurationError("demo --source needs --labels too: the membrane model is trained on expert labels.")
    if args.source:
        plan = demo.source_plan(args.source, args.labels, name=args.name, train_fraction=args.train_fraction,
                                voxel_size=args.voxel_size, labels_kind=args.labels_kind,
                                minutes=args.minutes or 2.0)
    else:
        plan = demo.sample_plan(minutes=args.minutes or 0.5)
    results = demo.run_demo(plan, settings)
    print(demo.format_results(results, settings))
    return 1 if results["failed"] else 0


def _worker(args) -> int:
    from neuropipe.database import connect
    from neuropipe.worker import load_pipeline, pipeline_tables, run_worker

    settings = load_settings()
    connect(settings)
    modules = load_pipeline(args.pipeline or ["schemas"], prefix=settings.schema_prefix)
    tables = pipeline_tables(modules)
    logger.info("serving %d tables: %s", len(tables), ", ".join(t.__name__ for t in tables))
    run_worker(tables, max_idle=args.max_idle, poll_seconds=args.poll, max_jobs=args.max_jobs)
    return 0


def _status(args) -> int:
    from neuropipe.database import connect
    from neuropipe.worker import load_pipeline, pipeline_tables

    settings = load_settings()
    connect(settings)
    tables = pipeline_tables(load_pipeline(args.pipeline or ["schemas"], prefix=settings.schema_prefix))
    columns = ("done", "pending", "reserved", "error", "ignore")
    print(f"{'table':<20}" + "".join(f"{c:>10}" for c in columns))
    for table in tables:
        jobs = table().jobs.progress()
        counts = {"done": len(table()), **jobs}
        print(f"{table.__name__:<20}" + "".join(f"{counts.get(c, 0):>10}" for c in columns))
    return 0


def _db(args) -> int:
    from neuropipe.embedded import EmbeddedPostgres

    server = EmbeddedPostgres()
    if args.action == "start":
        info = server.ensure_running()
        print(f"embedded PostgreSQL running on {info.host}:{info.port} (user {info.user})")
    elif args.action == "stop":
        server.stop()
        print("embedded PostgreSQL stopped")
    else:
        print(server.status())
    return 0


if __name__ == "__main__":
    sys.exit(main())
