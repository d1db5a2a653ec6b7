"""neuropipe: a DataJoint-native pipeline framework for neuroscience imaging.

The schema is the DAG: DataJoint Manual, Imported and Computed tables model the chain from
an image volume to membrane maps, cell detections and their scores, and workers that call
``populate`` fill it.  Pure compute kernels live in :mod:`neuropipe.ops`, the pipeline's
tables in the top-level ``schemas`` package, and the machinery (configuration, connection,
workers, command line) here.

From a notebook::

    import neuropipe
    neuropipe.connect()     # as configured: binds the bundled pipeline and the worker registry
    neuropipe.populate()    # the workers' loop, in this process
"""

from neuropipe.config import Settings, load_settings

__version__ = "0.1.0"
__all__ = ["Settings", "connect", "load_settings", "populate", "__version__"]


def __getattr__(name: str):
    """Give ``connect`` and ``populate`` (:mod:`neuropipe.session`) on first use.

    Importing them eagerly would load DataJoint and the worker with every ``import
    neuropipe``, kernels and command-line help included.
    """
    if name in ("connect", "populate"):
        from neuropipe import session

        return getattr(session, name)
    raise AttributeError(f"module 'neuropipe' has no attribute {name!r}")
