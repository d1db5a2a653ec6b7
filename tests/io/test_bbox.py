"""Bounding boxes: parsing, writing back, and the errors malformed ones give."""

import pytest

from neuropipe.errors import BadInputError
from neuropipe.io import format_bbox, parse_bbox


@pytest.mark.parametrize(
    "text, message",
    [("0:2,0:3", "three ranges"), ("0:2,a:3,0:1", "y range 'a:3'"), ("3:2,0:1,0:1", "0 <= start < stop"),
     ("-1:2,0:1,0:1", "0 <= start < stop"), ("0:2,0:1,0", "x range '0'")],
)
def test_malformed_bbox(text, message):
    with pytest.raises(BadInputError, match=message):
        parse_bbox(text)


def test_bbox_round_trip():
    assert parse_bbox(format_bbox(((0, 20), (5, 512), (7, 9)))) == ((0, 20), (5, 512), (7, 9))
