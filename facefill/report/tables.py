"""JSON, CSV and Markdown writers for metric tables."""
from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping, Sequence

from facefill.fileio import write_json_atomic, write_text_atomic

MISSING = "–"  # shown for NaN (e.g. hole metrics of an image without a hole)


def json_safe(obj):
    """A copy of ``obj`` that strict JSON accepts: NaN and ±inf become ``None``, numpy scalars
    and arrays become Python numbers and lists, tuples become lists."""
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):  # numpy scalar or array
        return json_safe(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path, obj) -> None:
    """Atomic, indented, strict JSON (NaN/inf written as null)."""
    write_json_atomic(path, json_safe(obj))


def format_value(value, digits: int = 2) -> str:
    """Numbers with ``digits`` decimals; NaN/None as an en dash; inf as ``inf``; others ``str``."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(number):
        return MISSING
    if math.isinf(number):
        return "inf" if number > 0 else "-inf"
    return f"{number:.{digits}f}"


def write_csv(path, rows: Iterable[Mapping], columns: Sequence[str], digits: int | None = 6) -> None:
    """One line per row with ``columns`` as the header; floats rounded to ``digits`` decimals
    (None: full precision); NaN written as ``nan`` so ``float()`` reads it back."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        cells = []
        for column in columns:
            value = row.get(column, "")
            if isinstance(value, float) and digits is not None and math.isfinite(value):
                value = f"{value:.{digits}f}"
            cells.append(value)
        writer.writerow(cells)
    write_text_atomic(path, buffer.getvalue())


def _escape_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence], digits: int | Sequence[int] = 2,
                   align: Sequence[str] | None = None) -> str:
    """A GitHub-flavoured Markdown table. Numbers are formatted with ``format_value`` (``digits``
    may be one value or one per column); ``align`` is per column ``l``/``r``/``c`` (default: text
    columns left, numeric columns right, decided from the first row)."""
    rows = [list(row) for row in rows]
    width = len(headers)
    per_column = list(digits) if isinstance(digits, Sequence) else [digits] * width
    if align is None:
        first = rows[0] if rows else [""] * width
        align = ["r" if isinstance(v, (int, float)) and not isinstance(v, bool) else "l" for v in first]
    rule = {"l": ":---", "r": "---:", "c": ":---:"}
    lines = ["| " + " | ".join(_escape_cell(str(h)) for h in headers) + " |",
             "| " + " | ".join(rule[a] for a in align) + " |"]
    for row in rows:
        if len(row) != width:
            raise ValueError(f"row has {len(row)} cells, table has {width} columns")
        cells = [_escape_cell(format_value(v, d)) for v, d in zip(row, per_column)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_markdown(path, text: str) -> None:
    write_text_atomic(path, text if text.endswith("\n") else text + "\n")
