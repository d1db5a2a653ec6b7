"""Which code makes a table's rows: package version, git commit, and a hash of the source.

A table's *code hash* covers the source of its class (``make()`` and whatever the class
defines), of its module, and of every module of this project that those refer to by name,
transitively: the kernels it calls (``neuropipe.ops``, ``neuropipe.blockwise``, ...).  Other
modules of tables are left out: their tables' rows have code hashes of their own, and a
row made from a stale upstream row is stale through it.  Editing a kernel therefore changes
the hash of every table whose module uses it, and ``neuropipe stale`` finds the rows those
tables made with the old code.  Library code (numpy, cc3d, torch) is covered by the package
versions, not hashed; the worker machinery (how jobs run, not what they compute) is not hashed.
A table whose code lies outside Python (a CWL tool and its script) names those files in a
class attribute ``source_files``; their content enters the hash too.

Everything here is computed once per process and cached.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from neuropipe import __version__

#: Top-level packages whose source counts as the pipeline's own code.
OWN_PACKAGES = ("neuropipe", "schemas")
#: The framework's machinery: how jobs run, not what they compute (never part of a code hash).
MACHINERY = ("neuropipe", "neuropipe.cli", "neuropipe.config", "neuropipe.database", "neuropipe.demo",
             "neuropipe.embedded", "neuropipe.errors", "neuropipe.watch", "neuropipe.worker", "neuropipe.provenance",
             "neuropipe.reports", "schemas")


@functools.lru_cache(maxsize=None)
def git_state(folder: str | None = None) -> tuple[str, bool]:
    """Return ``(commit, dirty)`` of the git work tree holding ``folder`` (default: this package).

    ``NEUROPIPE_GIT_COMMIT`` overrides it (worker images are built without ``.git``); where
    neither says, the commit is ``''``.  ``dirty`` is True when tracked files differ from the commit.
    """
    if os.environ.get("NEUROPIPE_GIT_COMMIT"):
        return os.environ["NEUROPIPE_GIT_COMMIT"][:40], os.environ.get("NEUROPIPE_GIT_DIRTY", "") not in ("", "0")
    folder = folder or str(Path(__file__).resolve().parents[2])
    try:
        commit = subprocess.run(["git", "-C", folder, "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        changes = subprocess.run(["git", "-C", folder, "status", "--porcelain", "--untracked-files=no"],
                                 capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "", False
    return commit, bool(changes)


@functools.lru_cache(maxsize=None)
def code_hash(table_class: type) -> str:
    """Return the 32-hex-digit hash of the code that makes ``table_class``'s rows."""
    digest = hashlib.md5()
    digest.update(_source_of(getattr(table_class, "function", table_class)).encode())  # a step: its function
    module = sys.modules.get(table_class.__module__)
    for path in [*sorted(code_files(module) if module else ()), *map(Path, getattr(table_class, "source_files", ()))]:
        digest.update(path.name.encode())
        digest.update(path.read_bytes() if path.is_file() else b"(missing)")
    return digest.hexdigest()


def _source_of(obj) -> str:
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError):  # defined interactively: its name is all there is
        return getattr(obj, "__qualname__", repr(obj))


def code_files(module: ModuleType) -> set[Path]:
    """Return the source files of the project's modules that ``module`` uses, itself included.

    Followed transitively through the project's own modules: a schema module that imports
    ``neuropipe.ops`` brings in every ``ops`` module.  Modules of other tables are not
    followed (see the module docstring).
    """
    seen: dict[str, Path] = {}
    pending = [module]
    while pending:
        current = pending.pop()
        path = getattr(current, "__file__", None)
        if current.__name__ in seen or not path or not Path(path).is_file() or (
                current is not module and _defines_tables(current)):
            continue  # no file: a script read from stdin or ``python -c``, a notebook's cells
        seen[current.__name__] = Path(path)
        pending.extend(_referenced_modules(current))
    return set(seen.values())


def _referenced_modules(module: ModuleType) -> list[ModuleType]:
    found = []
    for value in vars(module).values():
        name = value.__name__ if isinstance(value, ModuleType) else getattr(value, "__module__", None)
        if not isinstance(name, str) or name.split(".")[0] not in OWN_PACKAGES or _is_machinery(name):
            continue
        target = sys.modules.get(name) or importlib.import_module(name)
        found.append(target)
        if isinstance(value, ModuleType) and hasattr(value, "__path__"):  # a package: all its modules
            prefix = value.__name__ + "."
            found.extend(sub for key, sub in list(sys.modules.items()) if key.startswith(prefix) and sub)
    return found


def _defines_tables(module: ModuleType) -> bool:
    """Return whether ``module`` defines DataJoint tables (Manual, Lookup, Imported, Computed)."""
    from neuropipe.compat import user_table_base

    return any(isinstance(value, type) and issubclass(value, user_table_base()) and value.__module__ == module.__name__
               for value in vars(module).values())


def _is_machinery(name: str) -> bool:
    return any(name == prefix or (prefix.count(".") and name.startswith(prefix + ".")) for prefix in MACHINERY)


def versions() -> dict:
    """Return the versions that identify the code besides the hash: neuropipe, git, Python."""
    commit, dirty = git_state()
    return {"neuropipe_version": __version__, "git_commit": commit, "git_dirty": dirty,
            "python": sys.version.split()[0]}
