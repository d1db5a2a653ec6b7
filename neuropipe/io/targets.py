"""Writing results back where the data lives: Boss channels, precomputed layers, zarr arrays.

A target is named by a URI like a source (parsed by :func:`neuropipe.io.uri.parse_target`);
this module hands the result to the writer of the target's format
(:mod:`~neuropipe.io.boss`, :mod:`~neuropipe.io.precomputed`, :mod:`~neuropipe.io.zarr_arrays`):

=====================================================  ==========================================
URI                                                    written as
=====================================================  ==========================================
``bossdb://collection/experiment/channel``             a Boss channel (created where asked: uint8
                                                       image for probabilities, uint64 annotation
                                                       for labels), block by block through intern
``precomputed://file:///data/layer`` (or gs://, s3://)  a Neuroglancer precomputed layer (float32
                                                       image or uint32 segmentation when created)
``file:///data/results.zarr#path/in/group``            a zarr array (float32 or uint32 when created)
=====================================================  ==========================================

What is written is either a probability map (floats in [0, 1]) or a label volume (cell i
labelled i).  Each goes to the target's dtype when the target exists: probabilities scale to
0..255 or 0..65535 in an 8- or 16-bit channel, labels must fit the integer type; anything else
is refused with an error that names the dtypes (:func:`neuropipe.io.contents.fit_dtype`).
The volume lands at ``offset_zyx`` in the target's voxel coordinates (where the dataset's box
began in its source), so the result lies over the raw data in a viewer.  Writing the same box
again overwrites it: an export retried after a failure repeats its writes, it does not add to
them.
"""

from __future__ import annotations

import numpy as np

from neuropipe.io.boss import write_boss
from neuropipe.io.contents import CONTENTS, Written
from neuropipe.io.precomputed import write_precomputed
from neuropipe.io.uri import parse_target
from neuropipe.io.zarr_arrays import write_zarr


def write_volume(uri: str, array: np.ndarray, *, content: str, offset_zyx=(0, 0, 0), voxel_size_nm=(1, 1, 1),
                 create: bool = True, sources=()) -> Written:
    """Write a ZYX probability map or label volume to a target.

    Parameters
    ----------
    uri : str
        See the module's table (:func:`neuropipe.io.uri.parse_target`).
    array : ndarray
        ZYX; floats in [0, 1] for ``probability``, non-negative integers for ``labels``.
    content : {'probability', 'labels'}
    offset_zyx : tuple of int
        Where the array's first voxel lies in the target's voxel coordinates.
    voxel_size_nm : tuple of float
        ZYX, recorded in the metadata of a target that is created.
    create : bool
        Create the channel, layer or array where it is missing (else that is an error).
    sources : sequence of str
        Boss only: the image channels a created annotation channel is made from.

    Returns
    -------
    Written
        The target, the dtype written and the bytes written.

    Raises
    ------
    ValueError
        For a ``content`` other than ``probability`` or ``labels``.
    BadInputError
        For a target that is missing (and not to be created), refuses access, cannot hold the
        values, or does not cover the box.
    TransientError
        When the target's server keeps failing (the job is retried).
    """
    if content not in CONTENTS:
        raise ValueError(f"content must be one of {CONTENTS}, got {content!r}")
    target = parse_target(uri)
    if target.format == "bossdb":
        return write_boss(target, array, content=content, offset_zyx=offset_zyx, create=create, sources=sources)
    writer = write_precomputed if target.format == "precomputed" else write_zarr
    return writer(target, array, content=content, offset_zyx=offset_zyx, voxel_size_nm=voxel_size_nm, create=create)
