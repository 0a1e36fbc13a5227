"""PNG line charts drawn with PIL (no matplotlib): loss curves, metric-versus-step plots."""
from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from facefill.fileio import write_bytes_atomic

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf"]


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)  # FreeType build of Pillow >= 10.1
    except (TypeError, OSError):
        return ImageFont.load_default()


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values (1, 2, 2.5, 5 x 10^k steps) from at or below ``low``
    to at or above ``high``."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return []
    if high <= low:
        pad = abs(low) * 0.05 or 1.0
        low, high = low - pad, high + pad
    raw = (high - low) / max(count, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.floor(low / step + 1e-9) * step
    last = math.ceil(high / step - 1e-9) * step
    count = int(round((last - first) / step)) + 1
    digits = max(0, 12 - int(math.floor(math.log10(step))))
    return [float(round(first + i * step, digits)) + 0.0 for i in range(count)]


def _label(value: float, log: bool = False) -> str:
    if log:
        value = 10 ** value
    if value == 0:
        return "0"
    if abs(value) >= 1e5 or abs(value) < 1e-3:
        return f"{value:.1e}"
    return f"{value:.4g}"


def _clean(points, log_y: bool) -> list[tuple[float, float]]:
    cleaned = []
    for x, y in points:
        x, y = float(x), float(y)
        if log_y:
            if not y > 0:
                continue
            y = math.log10(y)
        if math.isfinite(x) and math.isfinite(y):
            cleaned.append((x, y))
    return sorted(cleaned)


def line_plot(series: Mapping[str, Sequence[tuple[float, float]]], path, title: str = "",
              xlabel: str = "", ylabel: str = "", *, width: int = 800, height: int = 480,
              log_y: bool = False) -> Path:
    """Draw one line per named series of (x, y) points and write a PNG atomically to ``path``.

    Non-finite points (and, with ``log_y``, non-positive ones) are skipped; a series with a
    single point is drawn as a dot. Returns the path written.
    """
    data = {name: _clean(points, log_y) for name, points in series.items()}
    every = [p for points in data.values() for p in points]
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font, title_font = _font(12), _font(15)
    left, right, top, bottom = 70, 20, 40 if title else 20, 50
    plot_w, plot_h = width - left - right, height - top - bottom
    if plot_w < 10 or plot_h < 10:
        raise ValueError(f"plot of {width}x{height} pixels is too small")

    if every:
        xs, ys = [p[0] for p in every], [p[1] for p in every]
        x_ticks, y_ticks = nice_ticks(min(xs), max(xs)), nice_ticks(min(ys), max(ys))
        x_lo, x_hi = min([min(xs)] + x_ticks), max([max(xs)] + x_ticks)
        y_lo, y_hi = min([min(ys)] + y_ticks), max([max(ys)] + y_ticks)
    else:
        x_ticks, y_ticks, x_lo, x_hi, y_lo, y_hi = [], [], 0.0, 1.0, 0.0, 1.0
    x_span, y_span = (x_hi - x_lo) or 1.0, (y_hi - y_lo) or 1.0

    def to_pixel(x, y):
        return (left + (x - x_lo) / x_span * plot_w, top + plot_h - (y - y_lo) / y_span * plot_h)

    for tick in y_ticks:  # grid and labels
        _, py = to_pixel(x_lo, tick)
        draw.line([(left, py), (left + plot_w, py)], fill="#e6e6e6")
        text = _label(tick, log_y)
        tw = draw.textlength(text, font=font)
        draw.text((left - 6 - tw, py - 7), text, fill="#333", font=font)
    for tick in x_ticks:
        px, _ = to_pixel(tick, y_lo)
        draw.line([(px, top), (px, top + plot_h)], fill="#e6e6e6")
        text = _label(tick)
        tw = draw.textlength(text, font=font)
        draw.text((px - tw / 2, top + plot_h + 5), text, fill="#333", font=font)
    draw.rectangle([left, top, left + plot_w, top + plot_h], outline="#444")

    for index, (name, points) in enumerate(data.items()):
        colour = PALETTE[index % len(PALETTE)]
        pixels = [to_pixel(x, y) for x, y in points]
        if len(pixels) > 1:
            draw.line(pixels, fill=colour, width=2, joint="curve")
        elif pixels:
            px, py = pixels[0]
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour)

    if not every:
        message = "no data"
        draw.text((left + plot_w / 2 - draw.textlength(message, font=font) / 2, top + plot_h / 2),
                  message, fill="#888", font=font)
    if title:
        draw.text((width / 2 - draw.textlength(title, font=title_font) / 2, 10), title, fill="#111",
                  font=title_font)
    if xlabel:
        draw.text((left + plot_w / 2 - draw.textlength(xlabel, font=font) / 2, height - 20), xlabel,
                  fill="#111", font=font)
    if ylabel:
        label = ylabel + (" (log)" if log_y else "")
        text_w = int(draw.textlength(label, font=font)) + 4
        strip = Image.new("RGB", (text_w, 16), "white")
        ImageDraw.Draw(strip).text((2, 1), label, fill="#111", font=font)
        rotated = strip.rotate(90, expand=True)
        image.paste(rotated, (4, int(top + plot_h / 2 - rotated.height / 2)))

    names = [name for name in data if len(series) > 1 or name]
    if names:  # legend, top right inside the plot
        row_h = 16
        box_w = int(max(draw.textlength(n, font=font) for n in names)) + 34
        x0, y0 = left + plot_w - box_w - 8, top + 8
        draw.rectangle([x0, y0, x0 + box_w, y0 + row_h * len(names) + 6], fill="white", outline="#bbb")
        for index, name in enumerate(names):
            colour = PALETTE[list(data).index(name) % len(PALETTE)]
            y = y0 + 4 + index * row_h
            draw.line([(x0 + 6, y + 7), (x0 + 24, y + 7)], fill=colour, width=3)
            draw.text((x0 + 30, y), name, fill="#111", font=font)

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    write_bytes_atomic(path, buffer.getvalue())
    return Path(path)
