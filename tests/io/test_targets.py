"""Writing through write_volume whatever the format: what it refuses before anything is written."""

import numpy as np
import pytest

from neuropipe.io.targets import write_volume


def test_an_unknown_content_is_refused_before_the_target_is_touched(tmp_path):
    with pytest.raises(ValueError, match="content must be one of"):
        write_volume(f"file://{tmp_path}/maps.zarr", np.zeros((1, 2, 2), np.float32), content="mask")
    assert not (tmp_path / "maps.zarr").exists()
