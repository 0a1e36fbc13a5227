"""Reports: JSON, CSV and Markdown tables, self-contained HTML with image grids, PNG plots.

Everything here writes atomically (``facefill.fileio``) and needs no network or matplotlib.
"""
from facefill.report.html import html_page, html_table, image_grid_html, png_data_uri, write_html
from facefill.report.plots import line_plot
from facefill.report.tables import (format_value, json_safe, markdown_table, write_csv, write_json,
                                    write_markdown)

__all__ = ["format_value", "html_page", "html_table", "image_grid_html", "json_safe", "line_plot",
           "markdown_table", "png_data_uri", "write_csv", "write_html", "write_json", "write_markdown"]
