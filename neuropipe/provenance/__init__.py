"""Provenance: which code, parameters, worker, inputs and resources made every computed row.

- :mod:`~neuropipe.provenance.code`: the code's identity (versions, git commit, source hash);
- :mod:`~neuropipe.provenance.sidecar`: the hidden table beside each computed table;
- :mod:`~neuropipe.provenance.record`: measuring a job and writing its row, in its transaction;
- :mod:`~neuropipe.provenance.stale`: rows whose code or settings changed since, and what
  depends on them.

Query it as any table::

    from neuropipe import provenance
    MembraneMap * provenance.of(MembraneMap)
"""

from neuropipe.provenance.code import code_hash, git_state, versions
from neuropipe.provenance.record import JobMeter, Recorder
from neuropipe.provenance.sidecar import Sidecar


def of(table) -> Sidecar:
    """Return the provenance sidecar of ``table`` (a class or instance), declaring it if needed."""
    return Sidecar(table).ensure()


__all__ = ["JobMeter", "Recorder", "Sidecar", "code_hash", "git_state", "of", "versions"]
