"""Report writers: PNG line plots, Markdown/CSV/JSON tables, self-contained HTML."""
from __future__ import annotations

import base64
import csv
import io
import json
import math

import numpy as np
import pytest
from PIL import Image

from facefill.report import (format_value, html_page, image_grid_html, json_safe, line_plot, markdown_table,
                             png_data_uri, write_csv, write_json)
from facefill.report.plots import nice_ticks


def test_line_plot_writes_png(tmp_path):
    series = {"generator": [(step, 2.0 * math.exp(-step / 20) + 0.1) for step in range(100)],
              "discriminator": [(step, 0.7) for step in range(0, 100, 10)] + [(100, float("nan"))]}
    path = line_plot(series, tmp_path / "plots" / "loss.png", "losses", "step", "loss")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (800, 480)
        pixels = np.asarray(image.convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 4       # lines, text and grid were drawn
    assert not list(tmp_path.glob("plots/.*.tmp*"))                   # written atomically


def test_line_plot_edge_cases(tmp_path):
    line_plot({}, tmp_path / "empty.png")
    line_plot({"one": [(3, 1.0)]}, tmp_path / "single.png", width=320, height=200)
    line_plot({"loss": [(0, 1e-3), (1, 0.0), (2, 10.0)]}, tmp_path / "log.png", log_y=True)
    with Image.open(tmp_path / "single.png") as image:
        assert image.size == (320, 200)
    assert (tmp_path / "empty.png").stat().st_size > 0 and (tmp_path / "log.png").stat().st_size > 0


def test_nice_ticks():
    assert nice_ticks(0.13, 2.1) == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
    assert nice_ticks(0, 199) == [0.0, 50.0, 100.0, 150.0, 200.0]
    assert nice_ticks(5, 5)[0] < 5 < nice_ticks(5, 5)[-1]


def test_markdown_table_formatting():
    text = markdown_table(["Method", "PSNR", "SSIM", "n"],
                          [["telea", 25.4567, 0.81234, 12], ["a|b", float("nan"), float("inf"), 3]],
                          digits=[0, 2, 4, 0])
    assert text == ("| Method | PSNR | SSIM | n |\n"
                    "| :--- | ---: | ---: | ---: |\n"
                    "| telea | 25.46 | 0.8123 | 12 |\n"
                    "| a\\|b | – | inf | 3 |\n")
    assert markdown_table(["a"], [["x"]], align=["c"]).splitlines()[1] == "| :---: |"
    with pytest.raises(ValueError, match="cells"):
        markdown_table(["a", "b"], [[1]])


def test_format_value():
    assert format_value(1.23456, 3) == "1.235"
    assert format_value(None) == "–" and format_value(float("nan")) == "–"
    assert format_value(7) == "7" and format_value("x") == "x" and format_value(-math.inf) == "-inf"


def test_csv_and_json_writers(tmp_path):
    write_csv(tmp_path / "t.csv", [{"a": "x", "b": 1.0 / 3}, {"a": "y", "b": float("nan")}], ["a", "b"])
    with open(tmp_path / "t.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows[0] == {"a": "x", "b": "0.333333"} and math.isnan(float(rows[1]["b"]))
    write_json(tmp_path / "t.json", {"v": float("nan"), "w": np.float32(0.5), "t": (1, 2), "i": math.inf})
    assert json.loads((tmp_path / "t.json").read_text()) == {"v": None, "w": 0.5, "t": [1, 2], "i": None}
    assert json_safe({"x": [np.int64(3)]}) == {"x": [3]}


def test_html_is_self_contained():
    image = np.zeros((8, 8, 3), np.uint8)
    image[2:6, 2:6] = 255
    uri = png_data_uri(image)
    assert uri.startswith("data:image/png;base64,")
    decoded = np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))
    assert np.array_equal(decoded, image)
    grid = image_grid_html([[image, None], [image, image]], ["a", "b"], ["r1", "r2"])
    page = html_page("Title <&>", [grid])
    assert page.count("<img ") == 3 and "Title &lt;&amp;&gt;" in page
    assert "http" not in page and "<link" not in page and "<script" not in page
