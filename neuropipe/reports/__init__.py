"""Reports and viewing: one self-contained HTML report of a pipeline, and a local Neuroglancer server.

- :mod:`~neuropipe.reports.report`: ``neuropipe report``, :func:`write_report`;
- :mod:`~neuropipe.reports.viewer`: ``neuropipe view``, :func:`serve_dataset` (a dataset's image,
  membrane probability and cell labels as Neuroglancer precomputed layers over localhost);
- :mod:`~neuropipe.reports.collect` and :mod:`~neuropipe.reports.results`: what they read from
  the database; :mod:`~neuropipe.reports.plots` and :mod:`~neuropipe.reports.images`: how it is drawn.
"""

from neuropipe.reports.report import write_report
from neuropipe.reports.viewer import serve_dataset

__all__ = ["serve_dataset", "write_report"]
