"""Bounding boxes written as ``"z0:z1,y0:y1,x0:x1"`` (half-open, ZYX, voxels)."""

from __future__ import annotations

from neuropipe.errors import BadInputError

Box = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]
_AXES = "zyx"


def parse_bbox(text: str) -> Box:
    """Parse a bounding box string.

    Parameters
    ----------
    text : str
        ``"z0:z1,y0:y1,x0:x1"``: three half-open, non-negative integer ranges in ZYX order.

    Returns
    -------
    tuple of three (start, stop) pairs

    Raises
    ------
    BadInputError
        If the text is not three ``start:stop`` ranges with 0 <= start < stop.

    Examples
    --------
    >>> parse_bbox("0:20, 0:512, 0:512")
    ((0, 20), (0, 512), (0, 512))
    """
    parts = str(text).replace(" ", "").split(",")
    if len(parts) != 3:
        raise BadInputError(f"bbox {text!r} must have three ranges 'z0:z1,y0:y1,x0:x1', found {len(parts)}.")
    box = []
    for axis, part in zip(_AXES, parts):
        bounds = part.split(":")
        try:
            start, stop = (int(value) for value in bounds)
        except ValueError:
            raise BadInputError(f"bbox {text!r}: the {axis} range {part!r} is not 'start:stop' in integers.") from None
        if not 0 <= start < stop:
            raise BadInputError(f"bbox {text!r}: the {axis} range {part!r} needs 0 <= start < stop.")
        box.append((start, stop))
    return tuple(box)


def format_bbox(box: Box) -> str:
    """Write a box as ``"z0:z1,y0:y1,x0:x1"`` (the inverse of :func:`parse_bbox`)."""
    return ",".join(f"{start}:{stop}" for start, stop in box)


def check_inside(box: Box, shape: tuple[int, ...], *, what: str = "volume") -> tuple[slice, slice, slice]:
    """Return the slices of ``box``, or raise if it reaches outside ``shape``.

    Raises
    ------
    BadInputError
        If any range ends beyond the volume's extent on its axis.
    """
    for axis, (start, stop), size in zip(_AXES, box, shape):
        if stop > size:
            raise BadInputError(
                f"bbox {format_bbox(box)} reaches outside the {what} of shape {tuple(shape)} (ZYX): "
                f"{axis} range {start}:{stop} exceeds {size}."
            )
    return tuple(slice(start, stop) for start, stop in box)
