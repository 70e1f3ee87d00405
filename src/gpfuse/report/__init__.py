"""``gpfuse report``: one self-contained HTML page (and optionally GitHub-markdown tables) from finished run
folders: the runs, their metrics (mean ± std over seeds; a comparison over several roots), training curves,
fusion gates and what the model did on its worst and best test samples."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from gpfuse.report.collect import Group, collect
from gpfuse.report.figures import curve_figures, gate_figure
from gpfuse.report.html import page, run_block
from gpfuse.report.sections import samples_section
from gpfuse.report.tables import Table, comparison_tables, group_tables, run_table
from gpfuse.utils.files import atomic_write_text

__all__ = ["by_kind", "metrics_tables", "write_report"]


def by_kind(groups: list[Group]) -> list[list[Group]]:
    """The groups split by task kind, in the order the kinds first appear: runs of different kinds (the demo's
    runs of every system) are never compared in one table or overlaid in one plot."""
    kinds: dict[str, list[Group]] = {}
    for g in groups:
        kinds.setdefault(g.task, []).append(g)
    return list(kinds.values())


def metrics_tables(groups: list[Group]) -> list[Table]:
    """One run: its table; one root of runs: per split the runs and their mean ± std; several roots of one
    task kind: the comparison tables; several kinds: these per kind."""
    kinds = by_kind(groups)
    if len(kinds) > 1:
        return [t for same in kinds for t in metrics_tables(same)]
    if len(groups) > 1:
        return comparison_tables(groups)
    runs = groups[0].runs
    return [run_table(runs[0])] if len(runs) == 1 else group_tables(groups[0])


def _metrics_html(groups: list[Group]) -> str:
    parts = [f'<div class="scroll">{t.html()}</div>' for t in metrics_tables(groups)]
    if len(groups) > 1:
        for g in groups:
            inner = [run_table(g.runs[0])] if len(g.runs) == 1 else group_tables(g)
            body = "".join(f'<div class="scroll">{t.html("metrics detail")}</div>' for t in inner)
            parts.append(f"<details><summary>{g.label}: every run</summary>{body}</details>")
    return "".join(parts)


def _curves_html(groups: list[Group]) -> str:
    kinds = by_kind(groups)
    parts = [
        f'<h3>{prefix}{title}</h3><img src="{uri}" alt="{prefix}{title}">'
        for same in kinds
        for prefix in [f"{same[0].task}: " if len(kinds) > 1 else ""]
        for title, uri in curve_figures(same)
    ]
    for g in groups:
        uri = gate_figure(g)
        if uri:
            parts.append(f'<h3>{g.label}: fusion gates</h3><img src="{uri}" alt="gates of {g.label}">')
    return "".join(parts) or '<p class="note">no per-epoch logs in these runs</p>'


def _samples_html(groups: list[Group]) -> str:
    parts = []
    for g in groups:
        run = g.runs[0]
        title, body = samples_section(run)
        suffix = f" (first of {len(g.runs)} runs)" if len(g.runs) > 1 else ""
        parts.append(f"<h3>{g.label}/{run.name}{suffix} — {title}</h3>{body}")
    return "".join(parts)


def write_report(paths: Sequence[str | Path], out: str | Path, markdown: str | Path | None = None) -> Path:
    """Write the HTML report of the runs or roots ``paths`` to ``out`` (and the metrics tables as GitHub
    markdown to ``markdown``); returns ``out``. A path that is not a finished run, nor a folder of them, is
    an error naming it."""
    groups = collect(list(paths))
    runs = "".join(run_block(r) for g in groups for r in g.runs)
    sections = [
        ("runs", "Runs", runs),
        ("metrics", "Metrics", _metrics_html(groups)),
        ("curves", "Curves", _curves_html(groups)),
        ("samples", "What the model did", _samples_html(groups)),
    ]
    out = Path(out)
    atomic_write_text(out, page(groups, sections))
    if markdown is not None:
        atomic_write_text(Path(markdown), "\n".join(t.markdown() for t in metrics_tables(groups)))
    return out
