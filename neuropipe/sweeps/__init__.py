"""Parameter sweeps over the graph: insert parameter sets from a file, read back their scores.

- :mod:`~neuropipe.sweeps.spec`: neuropipe's sweep file (lists, ranges, min/max with a grid
  or random sampler);
- :mod:`~neuropipe.sweeps.saber`: SABER's parameter files (metaparameters feeding the inputs
  of steps), and :func:`read_sweep_file`, which reads either format;
- :mod:`~neuropipe.sweeps.scores`: inserting the sets, and the results joined with their
  parameters, best first, as a table, a CSV file and a plot per parameter.
"""

from neuropipe.sweeps.saber import StepSets, read_saber, read_sweep_file
from neuropipe.sweeps.scores import insert_sweeps, parameter_tables, plot_scores, score_rows, write_csv
from neuropipe.sweeps.spec import Sweep, read_sweeps

__all__ = ["StepSets", "Sweep", "insert_sweeps", "parameter_tables", "plot_scores", "read_saber", "read_sweep_file",
           "read_sweeps", "score_rows", "write_csv"]
