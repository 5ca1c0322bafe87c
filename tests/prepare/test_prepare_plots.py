"""components.common.plots, as the prepare report uses it."""

from __future__ import annotations

import matplotlib

from components.common.plots import histogram_png


def test_histogram_png_is_deterministic_and_handles_empty_series(tmp_path):
    backend = matplotlib.get_backend()
    series = {"train": [1, 5, 5, 9, 12], "test": [4, 6]}
    a = histogram_png(series, tmp_path / "a.png", "t", "tokens", vline=16, vline_label="max")
    b = histogram_png(series, tmp_path / "sub" / "b.png", "t", "tokens", vline=16, vline_label="max")
    assert a.read_bytes().startswith(b"\x89PNG") and a.read_bytes() == b.read_bytes()
    other = histogram_png({"train": [1, 5, 5, 9, 13], "test": [4, 6]}, tmp_path / "c.png", "t", "tokens")
    assert other.read_bytes() != a.read_bytes()
    # No data at all (e.g. an empty test split) still gives a figure, and a single series works.
    assert histogram_png({"train": [], "test": []}, tmp_path / "empty.png", "t", "x").stat().st_size > 0
    assert histogram_png([3, 3, 3], tmp_path / "one.png", "t", "x").stat().st_size > 0
    assert matplotlib.get_backend() == backend  # importing/using the helpers changes no global state
