"""The code hash of a table whose module has no file of its own (a script from stdin, ``python -c``)."""

import sys
import types

from neuropipe.provenance.code import code_hash


def test_a_table_defined_in_a_script_read_from_stdin_still_has_a_code_hash():
    module = types.ModuleType("from_stdin")
    module.__file__ = "<stdin>"  # what Python sets for `python - < script.py`
    exec("class Smoothed:\n    def make(self, key):\n        return key\n", module.__dict__)
    module.Smoothed.__module__ = "from_stdin"
    sys.modules["from_stdin"] = module
    try:
        digest = code_hash(module.Smoothed)
        assert len(digest) == 32 and digest == code_hash(module.Smoothed)
    finally:
        del sys.modules["from_stdin"]
