"""neuropipe: a DataJoint-native pipeline framework for neuroscience imaging.

The schema is the DAG: DataJoint Manual, Imported and Computed tables model the chain from
an image volume to membrane maps, cell detections and their scores, and workers that call
``populate`` fill it.  Pure compute kernels live in :mod:`neuropipe.ops`, the pipeline's
tables in the top-level ``schemas`` package, and the machinery (configuration, connection,
workers, command line) here.
"""

from neuropipe.config import Settings, load_settings
from neuropipe.database import connect

__version__ = "0.1.0"
__all__ = ["Settings", "connect", "load_settings", "__version__"]
