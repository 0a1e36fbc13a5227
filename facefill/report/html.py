"""Self-contained HTML reports: inline CSS, images as base64 PNG data URIs, no external resources."""
from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence

import numpy as np
from PIL import Image

from facefill.fileio import write_text_atomic
from facefill.report.tables import format_value

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.6em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; }
th { background: #f2f2f2; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.grid td { border: none; padding: 2px; text-align: center; vertical-align: top; font-size: 0.8em; }
table.grid th { background: none; border: none; font-weight: 600; font-size: 0.85em; }
table.grid img { image-rendering: pixelated; display: block; }
.meta { color: #555; } code { background: #f5f5f5; padding: 0 0.2em; }
"""


def png_data_uri(image: np.ndarray | Image.Image) -> str:
    """``data:image/png;base64,...`` for an HxWx3 / HxW uint8 array or a PIL image."""
    if not isinstance(image, Image.Image):
        array = np.asarray(image)
        if array.dtype != np.uint8:
            raise ValueError(f"expected a uint8 image, got {array.dtype}")
        image = Image.fromarray(array)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def html_table(headers: Sequence[str], rows: Sequence[Sequence], digits: int | Sequence[int] = 2,
               caption: str | None = None) -> str:
    """A plain HTML table; numbers formatted as in the Markdown tables, right-aligned."""
    width = len(headers)
    per_column = list(digits) if isinstance(digits, Sequence) else [digits] * width
    parts = ["<table>"]
    if caption:
        parts.append(f"<caption>{html.escape(caption)}</caption>")
    parts.append("<tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in headers) + "</tr>")
    for row in rows:
        cells = []
        for value, digits_here in zip(row, per_column):
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            css = ' class="num"' if numeric else ""
            cells.append(f"<td{css}>{html.escape(format_value(value, digits_here))}</td>")
        parts.append("<tr>" + "".join(cells) + "</tr>")
    parts.append("</table>")
    return "\n".join(parts)


def image_grid_html(rows: Sequence[Sequence[np.ndarray | None]], column_titles: Sequence[str],
                    row_titles: Sequence[str] | None = None, display_size: int | None = None) -> str:
    """A table of images (one list per row; ``None`` leaves a cell empty). Small images are shown
    enlarged (nearest neighbour) to at least ``display_size`` pixels wide (default 128)."""
    parts = ['<table class="grid">', "<tr>" + ("<th></th>" if row_titles else "")
             + "".join(f"<th>{html.escape(t)}</th>" for t in column_titles) + "</tr>"]
    for index, row in enumerate(rows):
        cells = []
        if row_titles:
            cells.append(f"<th>{html.escape(str(row_titles[index]))}</th>")
        for image in row:
            if image is None:
                cells.append("<td></td>")
                continue
            height, width = np.asarray(image).shape[:2]
            shown = max(display_size or 128, width)
            shown_height = round(height * shown / width)
            cells.append(f'<td><img src="{png_data_uri(image)}" width="{shown}" height="{shown_height}" '
                         f'alt=""></td>')
        parts.append("<tr>" + "".join(cells) + "</tr>")
    parts.append("</table>")
    return "\n".join(parts)


def html_page(title: str, body: Sequence[str] | str) -> str:
    """A complete HTML document; ``body`` is trusted HTML (escape user text before passing it)."""
    content = body if isinstance(body, str) else "\n".join(body)
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
            f"<h1>{html.escape(title)}</h1>\n{content}\n</body>\n</html>\n")


def write_html(path, title: str, body: Sequence[str] | str) -> None:
    write_text_atomic(path, html_page(title, body))
