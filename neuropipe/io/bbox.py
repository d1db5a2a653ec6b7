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


def check_inside(box: Box, shape: tuple[int, ...], *, what: str = "volume",
                 origin: tuple[int, ...] = (0, 0, 0)) -> tuple[slice, slice, slice]:
    """Return the slices of ``box`` relative to ``origin``, or raise if it reaches outside the volume.

    Parameters
    ----------
    box : tuple of three (start, stop) pairs
        In the volume's voxel coordinates.
    shape : tuple of int
        The volume's extent, ZYX.
    what : str
        Names the volume in messages.
    origin : tuple of int
        Coordinates of the volume's first voxel (nonzero where a source has an offset).

    Raises
    ------
    BadInputError
        If any range starts before the origin or ends beyond the volume's extent on its axis.
    """
    for axis, (start, stop), size, first in zip(_AXES, box, shape, origin):
        if start < first or stop > first + size:
            extent = f"shape {tuple(shape)}" + (f" starting at {tuple(origin)}" if any(origin) else "")
            limit = f"exceeds {size}" if not any(origin) else f"is not within {first}:{first + size}"
            raise BadInputError(
                f"bbox {format_bbox(box)} reaches outside the {what} of {extent} (ZYX): "
                f"{axis} range {start}:{stop} {limit}."
            )
    return tuple(slice(start - first, stop - first) for (start, stop), first in zip(box, origin))
