"""The plan of a one-pass raw conversion: every map qemu-img could print, read or refused."""

from __future__ import annotations

import pytest

from imageport.pipeline.data.mapped import Run, data_bytes, plan


def _data(start, length, offset, **extra):
    return {
        "start": start,
        "length": length,
        "depth": 0,
        "present": True,
        "zero": False,
        "data": True,
        "offset": offset,
        **extra,
    }


def _zero(start, length, present=False):
    return {
        "start": start,
        "length": length,
        "depth": 0,
        "present": present,
        "zero": True,
        "data": False,
    }


def test_a_plain_map_becomes_runs_with_adjacent_holes_merged():
    extents = [
        _data(0, 100, 4096),
        _zero(100, 50),
        _zero(150, 50, present=True),
        _data(200, 56, 1000),
    ]
    runs = plan(extents, 256, 8192)
    assert runs == [Run(0, 100, 4096), Run(100, 100, None), Run(200, 56, 1000)]
    assert data_bytes(runs) == 156


def test_an_empty_image_is_one_hole():
    assert plan([_zero(0, 1024)], 1024, 512) == [Run(0, 1024, None)]


@pytest.mark.parametrize(
    ("extents", "why"),
    [
        ([_data(0, 100, None)], "data without an offset (compressed or encrypted)"),
        ([{**_data(0, 100, 0), "offset": "0"}], "an offset that is not an integer"),
        ([_data(0, 100, 8100)], "data past the end of the file"),
        ([_data(0, 100, -1)], "a negative offset"),
        ([_data(0, 100, 0, compressed=True)], "compressed data (qemu 8 names it)"),
        ([{**_data(0, 100, 0), "depth": 1}], "data from a backing file"),
        ([_zero(0, 50), _zero(60, 40)], "a gap"),
        ([_zero(0, 60), _zero(50, 50)], "an overlap"),
        ([_zero(0, 0), _zero(0, 100)], "an empty extent"),
        ([{**_zero(0, 100), "zero": False}], "neither data nor zeros"),
        ([_zero(0, 99)], "less than the virtual size"),
        ([_zero(0, 101)], "more than the virtual size"),
        ([{"start": True, "length": 100, "zero": True}], "a boolean for a number"),
    ],
)
def test_anything_unaccounted_for_is_left_to_qemu_img(extents, why):
    assert plan(extents, 100, 8192) is None, why
