"""Writing test volumes in the formats neuropipe reads."""

import numpy as np
import tensorstore


def write_precomputed(path, volume_zyx, *, offset_xyz=(0, 0, 0), resolution_xyz=(4, 4, 40), chunk_xyz=(4, 4, 2)):
    """Write a ZYX volume as a one-scale precomputed layer (XYZ + channel on disk)."""
    x, y, z = volume_zyx.shape[::-1]
    spec = {"driver": "neuroglancer_precomputed", "kvstore": f"file://{path}/",
            "multiscale_metadata": {"type": "image", "data_type": volume_zyx.dtype.name, "num_channels": 1},
            "scale_metadata": {"size": [x, y, z], "voxel_offset": list(offset_xyz), "resolution": list(resolution_xyz),
                               "encoding": "raw", "chunk_size": list(chunk_xyz)}}
    store = tensorstore.open(spec, create=True, delete_existing=True).result()
    store[..., 0].write(np.transpose(volume_zyx, (2, 1, 0))).result()
    return f"precomputed://file://{path}"
