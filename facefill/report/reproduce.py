"""Markdown for ``facefill reproduce``: one table per paper, and the generated section of RESULTS.md.

The section sits between ``SECTION_BEGIN`` and ``SECTION_END``; inside it each paper has its own
block between ``<!-- reproduce KEY: begin -->`` and ``<!-- reproduce KEY: end -->``. Re-running
replaces the blocks of the papers it scored and keeps the others, so the section never grows.
"""
from __future__ import annotations

import re
from pathlib import Path

from facefill.fileio import write_text_atomic
from facefill.papers import PAPER_KEYS
from facefill.report.tables import markdown_table

SECTION_BEGIN = "<!-- facefill reproduce: begin (generated: `facefill reproduce` rewrites this section) -->"
SECTION_END = "<!-- facefill reproduce: end -->"
SECTION_TITLE = "## The seed papers' tables (`facefill reproduce`)"
SECTION_INTRO = ("Each paper's protocol run on the shipped weights by `facefill reproduce --paper KEY` "
                 "(data, size, masks and metrics as the paper defines them, on facefill's held-out test "
                 "split): the paper's numbers, facefill's, and the difference (facefill minus paper). "
                 "`configs/` and `docs/reproduce.md` train each method at its paper's settings.")
BLOCK = re.compile(r"<!-- reproduce (?P<key>[\w-]+): begin -->\n(?P<body>.*?)<!-- reproduce (?P=key): end -->\n?",
                   re.S)
METRIC_TITLES = {"psnr": "PSNR", "ssim": "SSIM", "psnr_hole": "PSNR (hole)", "ssim_hole": "SSIM (hole)",
                 "l1": "L1 %", "l2": "L2 %"}
METRIC_DIGITS = {"psnr": 2, "ssim": 3, "psnr_hole": 2, "ssim_hole": 3, "l1": 2, "l2": 2}


def _count(number: int) -> str:
    return f"{number:,}"


def _images_line(result: dict) -> str:
    parts = []
    for kind, counts in result["images"].items():
        text = f"`{kind}` {_count(counts['scored'])}"
        if result.get("sharpest"):
            text += (f" (the {_count(counts['protocol_images'])} sharpest of {_count(counts['test_images'])} "
                     f"test faces)")
        if counts["scored"] < counts["protocol_images"]:
            text += (f" — **sampled, {_count(counts['scored'])} images** (the first {_count(counts['scored'])} "
                     f"of {_count(counts['protocol_images'])} by file name)")
        parts.append(text)
    return "; ".join(parts)


def _weights_cell(info: dict) -> str:
    if "error" in info:
        return "no shipped weights"
    if "weights" not in info:
        return "built in"
    steps = f", {info['steps']:,} steps" if isinstance(info.get("steps"), int) else ""
    return f"{info['weights']}{steps}"


def table_markdown(result: dict) -> str:
    """The paper's numbers, facefill's and the difference per metric; facefill's alone for a
    paper that reports none."""
    metrics = result["metrics"]
    with_paper = any(row["source"] for row in result["table"])
    parts = ("paper", "facefill", "difference") if with_paper else ("facefill",)
    headers, digits = ["method", "masks", "images"], [0, 0, 0]
    for metric in metrics:
        title = METRIC_TITLES[metric]
        headers += [f"{title} paper", f"{title} facefill", f"Δ {title}"] if with_paper else [title]
        digits += [METRIC_DIGITS[metric]] * len(parts)
    headers += ["PSNR s.e.", "weights / note"]
    digits += [2, 0]
    rows = []
    for row in result["table"]:
        name = f"{row['method']} ({row['variant']})" if row["variant"] else row["method"]
        cells = [name, row["masks"], row["images"] if row["images"] is not None else "–"]
        cells += [row[part][metric] for metric in metrics for part in parts]
        info = result["methods"].get(row["method"], {}) if not row["variant"] else {}
        cells += [row["psnr_se"], row["note"] if row["variant"] else _weights_cell(info)]
        rows.append(cells)
    align = ["l", "l", "r"] + ["r"] * (len(parts) * len(metrics) + 1) + ["l"]
    return markdown_table(headers, rows, digits, align=align).rstrip("\n")


def _margin_line(result: dict) -> str:
    parts = []
    for kind, values in result.get("over_telea", {}).items():
        shown = [f"{v:+.{METRIC_DIGITS[m]}f}{' dB' if m == 'psnr' else ''} {METRIC_TITLES[m]}"
                 for m, v in values.items() if v is not None]
        if shown:
            parts.append(f"`{kind}` " + ", ".join(shown))
    return f"{result['method']} minus telea on the same images: " + "; ".join(parts) + "." if parts else ""


def paper_markdown(result: dict, info: dict, level: int = 3) -> str:
    """One paper's block: protocol, what was scored, the table, notes, sources and how it ran."""
    sources = sorted({row["source"] for row in result["table"] if row["source"]})
    lines = [f"{'#' * level} {result['paper']}: {result['title']}", "",
             f"Paper's protocol: {result['protocol']}.", "",
             f"facefill: the `{result['data_folder']}` test split at {result['size']} px with its stored "
             f"masks; images scored: {_images_line(result)}. Metrics as `facefill eval` computes them: PSNR "
             f"and SSIM over the whole image with the known pixels kept"
             + (", L2 % the mean squared error over the hole in % of the value range" if "l2" in result["metrics"]
                else "") + ".", "",
             table_markdown(result)]
    margin = _margin_line(result)
    with_paper = any(row["source"] for row in result["table"])
    lines += [" ".join(part for part in ("Δ = facefill minus paper." if with_paper else "",
                                         "PSNR s.e.: the standard error of facefill's mean PSNR.", margin) if part)]
    lines += [f"{note}" for note in result.get("notes", [])]
    if sources:
        lines += ["Paper numbers: " + "; ".join(sources) + "."]
    lines += [f"Measured {info['date'][:10]} on {info['device']} with {info['threads']} thread(s): "
              f"{_seconds(result)}, seed {info['seed']}"
              + (", bf16 autocast" if info.get("amp") else "") + "."]
    return "\n\n".join(line for line in lines if line != "") + "\n"


def _seconds(timed: dict) -> str:
    """Wall-clock and CPU time: far apart when other processes share the CPU."""
    return f"{timed['wall_seconds']:.0f} s wall clock ({timed['cpu_seconds']:.0f} s of CPU time)"


def report_markdown(summary: dict) -> str:
    """The report folder's README.md: every paper's block, then the failures."""
    lines = ["# facefill reproduce", "", SECTION_INTRO, "",
             f"Total {_seconds(summary)} on {summary['device']} with {summary['threads']} thread(s).", ""]
    lines += [paper_markdown(result, summary, level=2) for result in summary["papers"]]
    if summary["failures"]:
        lines += ["## Not run", ""] + [f"- {f['paper']}: {f['error']}" for f in summary["failures"]]
    return "\n".join(lines) + "\n"


def update_section(text: str, blocks: dict[str, str]) -> str:
    """``text`` with the generated section holding ``blocks`` (paper key -> Markdown) in place of
    the blocks of the same papers; the other papers' blocks are kept; the section is appended
    at the end when ``text`` has none."""
    begin, end = text.find(SECTION_BEGIN), text.find(SECTION_END)
    if begin != -1 and end > begin:
        before, inside, after = text[:begin], text[begin + len(SECTION_BEGIN):end], text[end + len(SECTION_END):]
    else:
        before, inside, after = text.rstrip("\n") + "\n\n" if text.strip() else "", "", "\n"
    kept = {match["key"]: match["body"] for match in BLOCK.finditer(inside)}
    kept.update({key: body if body.endswith("\n") else body + "\n" for key, body in blocks.items()})
    order = [key for key in PAPER_KEYS if key in kept] + sorted(set(kept) - set(PAPER_KEYS))
    body = "".join(f"<!-- reproduce {key}: begin -->\n{kept[key]}<!-- reproduce {key}: end -->\n\n"
                   for key in order)
    section = f"{SECTION_BEGIN}\n{SECTION_TITLE}\n\n{SECTION_INTRO}\n\n{body}{SECTION_END}"
    return before + section + (after if after.startswith("\n") else "\n" + after)


def update_results(path, summary: dict) -> None:
    """Rewrite the papers' blocks of the generated section of ``path`` (created when missing)."""
    path = Path(path)
    text = path.read_text() if path.exists() else ""
    blocks = {result["paper"]: paper_markdown(result, summary) for result in summary["papers"]}
    write_text_atomic(path, update_section(text, blocks))
