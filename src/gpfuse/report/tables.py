"""Metrics tables of runs, of the seeds of one root (mean ± std) and of several roots (a comparison with the
best value per column and each row's difference to the first), as HTML and as GitHub markdown."""

from __future__ import annotations

import html
from dataclasses import dataclass, field

import numpy as np

from gpfuse.report.collect import Group, Run, metric_sets

__all__ = ["Cell", "Table", "comparison_tables", "group_tables", "higher_is_better", "run_table"]


def higher_is_better(metric: str) -> bool:
    """Whether a larger value of ``metric`` is better: errors and distances (MAE, loss, HD95 in mm) go down,
    every other gpfuse metric (Dice, IoU, mAP, rank-k, mINP, accuracies, F1, Corr, NSD, S/E/F-measures) up."""
    return metric.rsplit("/", 1)[-1].lower() not in ("mae", "loss") and "hd95" not in metric.lower()


@dataclass
class Cell:
    """One value (a mean, with the std over runs when there are several), its difference to a reference row
    and whether it is the column's best."""

    value: float | None
    std: float | None = None
    diff: float | None = None
    best: bool = False

    def text(self) -> str:
        if self.value is None or not np.isfinite(self.value):
            return "" if self.value is None else "nan"
        out = f"{self.value:.4f}" + (f" ± {self.std:.4f}" if self.std is not None else "")
        return out + (f" ({self.diff:+.4f})" if self.diff is not None else "")


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[tuple[str, list[Cell]]] = field(default_factory=list)
    note: str = ""

    def html(self, css_class: str = "metrics") -> str:
        head = "".join(f"<th>{html.escape(c)} {'↑' if higher_is_better(c) else '↓'}</th>" for c in self.columns)
        body = []
        for label, cells in self.rows:
            tds = []
            for column, cell in zip(self.columns, cells):
                attrs = f' data-metric="{html.escape(column)}"'
                if cell.value is not None:
                    attrs += f' data-value="{cell.value!r}"'
                if cell.diff is not None:
                    attrs += f' data-diff="{cell.diff!r}"'
                text = html.escape(cell.text())
                tds.append(
                    f'<td class="best"{attrs}><strong>{text}</strong></td>' if cell.best else f"<td{attrs}>{text}</td>"
                )
            body.append(f"<tr><th>{html.escape(label)}</th>{''.join(tds)}</tr>")
        note = f'<p class="note">{html.escape(self.note)}</p>' if self.note else ""
        return (
            f'<table class="{css_class}"><caption>{html.escape(self.title)}</caption>'
            f"<thead><tr><th></th>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{note}"
        )

    def markdown(self) -> str:
        def md(text: str) -> str:
            return text.replace("|", "\\|")

        lines = [
            f"**{md(self.title)}**",
            "",
            "| | " + " | ".join(f"{md(c)} {'↑' if higher_is_better(c) else '↓'}" for c in self.columns) + " |",
            "|---|" + "---:|" * len(self.columns),
        ]
        for label, cells in self.rows:
            texts = [f"**{c.text()}**" if c.best else c.text() for c in cells]
            lines.append(f"| {md(label)} | " + " | ".join(md(t) for t in texts) + " |")
        if self.note:
            lines += ["", md(self.note)]
        return "\n".join(lines) + "\n"


def _columns(metric_dicts: list[dict[str, float]]) -> list[str]:
    return list(dict.fromkeys(k for m in metric_dicts for k in m))


def run_table(run: Run) -> Table:
    """One row per split / test set of one run."""
    sets = metric_sets(run.metrics)
    table = Table(
        f"{run.name}: metrics (best epoch {run.metrics.get('best_epoch', '?')})", _columns(list(sets.values()))
    )
    for name, values in sets.items():
        table.rows.append((name, [Cell(values.get(c)) for c in table.columns]))
    return table


def _mean_std(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std(ddof=1 if len(a) > 1 else 0))


def group_tables(group: Group) -> list[Table]:
    """Per split / test set: one row per run and their mean ± std (std with ddof=1, as ``gpfuse summary``)."""
    per_run = [metric_sets(r.metrics) for r in group.runs]
    tables = []
    for name in dict.fromkeys(s for sets in per_run for s in sets):
        columns = _columns([sets.get(name, {}) for sets in per_run])
        table = Table(f"{group.label}: {name}, {len(group.runs)} runs", columns)
        for run, sets in zip(group.runs, per_run):
            table.rows.append((run.name, [Cell(sets.get(name, {}).get(c)) for c in columns]))
        cells = []
        for c in columns:
            values = [sets[name][c] for sets in per_run if c in sets.get(name, {})]
            cells.append(Cell(*_mean_std(values)) if values else Cell(None))
        table.rows.append(("mean ± std", cells))
        tables.append(table)
    return tables


def comparison_tables(groups: list[Group]) -> list[Table]:
    """Per split / test set: one row per group (mean ± std over its runs), the best value of each column marked
    (by :func:`higher_is_better`), each row's difference to the first row."""
    per_group = [[metric_sets(r.metrics) for r in g.runs] for g in groups]
    names = dict.fromkeys(s for runs in per_group for sets in runs for s in sets)
    tables = []
    for name in names:
        columns = _columns([sets.get(name, {}) for runs in per_group for sets in runs])
        table = Table(
            f"comparison: {name}",
            columns,
            note=f"mean ± std over each root's runs; (±x): difference to {groups[0].label}; bold: best of the column",
        )
        grid: list[list[Cell]] = []
        for runs in per_group:
            row = []
            for c in columns:
                values = [sets[name][c] for sets in runs if c in sets.get(name, {})]
                mean, std = _mean_std(values) if values else (None, None)
                row.append(Cell(mean, std if len(values) > 1 else None))
            grid.append(row)
        for j, c in enumerate(columns):
            ref = grid[0][j].value
            for row in grid[1:]:
                if ref is not None and row[j].value is not None:
                    row[j].diff = row[j].value - ref  # type: ignore[operator]  # both floats here
            finite = [v for row in grid if (v := row[j].value) is not None and np.isfinite(v)]
            if len(finite) > 1:
                best = max(finite) if higher_is_better(c) else min(finite)
                for row in grid:
                    row[j].best = row[j].value == best
        table.rows = [(g.label, row) for g, row in zip(groups, grid)]
        tables.append(table)
    return tables
