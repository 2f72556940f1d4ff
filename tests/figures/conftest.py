"""Helpers for the figure tests: walk a figure's data and check how numbers are sent."""

from __future__ import annotations

import numpy as np
import pytest

NUMERIC_KEYS = {"x", "y", "z", "customdata"}


def numeric_arrays(figure):
    """(trace index, key, value) of every x / y / z / customdata in the figure's traces."""
    for index, trace in enumerate(figure.data):
        data = trace.to_plotly_json()
        for key in NUMERIC_KEYS & set(data):
            yield index, key, data[key]


def assert_float32_payload(figure) -> None:
    """Numbers go to plotly as float32 (or int32 index) numpy arrays: never
    float64/float16 arrays and never Python lists of numbers."""
    for index, key, value in numeric_arrays(figure):
        if isinstance(value, np.ndarray):
            if value.dtype.kind == "f":
                assert value.dtype == np.float32, (index, key, value.dtype)
            elif value.dtype.kind in "iu":
                assert value.dtype.itemsize <= 4, (index, key, value.dtype)
            continue
        if (
            isinstance(value, (list, tuple))
            and value
            and all(isinstance(v, (int, float)) and v is not None for v in value)
        ):
            pytest.fail(f"trace {index} sends {key} as a Python list of numbers")


@pytest.fixture
def check_payload():
    return assert_float32_payload
