"""CWL tools and workflows as tables: ``neuropipe cwl import FILE.cwl [-o module.py]``.

- :mod:`~neuropipe.cwl.document` -- reading a CWL file (validated by cwltool's loader, read
  with cwl-utils): steps, where each input comes from, outputs, resources; what neuropipe
  does not run is refused by name;
- :mod:`~neuropipe.cwl.module` -- the pipeline module written for it: per step a parameter-set
  Lookup and a Computed table;
- :mod:`~neuropipe.cwl.tables` -- the mixins those tables use (:class:`StepParams`,
  :class:`StepRun`);
- :mod:`~neuropipe.cwl.runner` -- one job: the step's tool run by cwltool, its outputs, its
  stdout and stderr, and SABER's ``score_format``.

Needs the ``cwl`` extra (``pip install 'neuropipe[cwl]'``: cwltool and cwl-utils).
"""

from neuropipe.cwl.document import CWLError, load
from neuropipe.cwl.tables import StepParams, StepRun

__all__ = ["CWLError", "StepParams", "StepRun", "load"]
