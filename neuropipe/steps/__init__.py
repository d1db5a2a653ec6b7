"""Steps: a scientist's own step declared from a plain Python function.

- :mod:`~neuropipe.steps.declare` -- :func:`step`: the function's settings become a
  parameter-set Lookup, the function a Computed table keyed by its inputs' tables;
- :mod:`~neuropipe.steps.inputs` -- :func:`provide`: which table gives a positional parameter
  (``image``, ``probability``, ``labels``, ``cells``, or an earlier step's name);
- :mod:`~neuropipe.steps.outputs` -- how the return annotation becomes columns (arrays in the
  store, scalars and small dicts as columns).

Example (``docs/steps.md`` says more)::

    from neuropipe import steps

    @steps.step(schema)
    def smoothed(image, *, sigma: float = 1.0) -> np.ndarray:
        return scipy.ndimage.gaussian_filter(np.asarray(image, np.float32), sigma)

    SmoothedParams.insert_params({"sigma": 2.0})
    neuropipe.populate()
"""

from neuropipe.steps.declare import step
from neuropipe.steps.inputs import Provided, declared_modules, provide

__all__ = ["Provided", "declared_modules", "provide", "step"]
