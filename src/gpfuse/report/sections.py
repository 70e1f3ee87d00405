""" "What the model did", per task kind, from a run's per-sample test results (``RUN/samples/``, written at
evaluation by :mod:`gpfuse.tasks.samples`): HTML fragments with embedded figures."""

from __future__ import annotations

import csv
import html
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from gpfuse.report.collect import Run
from gpfuse.report.figures import figure, png_uri
from gpfuse.tasks.overlays import GREEN, RED, contour

__all__ = ["SECTIONS", "samples_section"]


def _img(uri: str, alt: str) -> str:
    return f'<img src="{uri}" alt="{html.escape(alt)}">'


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _simple_table(header: list[str], rows: list[list[str]], caption: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f'<table class="samples">{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _draw_contours(image: np.ndarray, *masks: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """(H, W, 3) uint8 ``image`` (grey (H, W) allowed) with each (bool mask (H, W), colour) contour drawn."""
    out = np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image.copy()
    width = max(1, round(min(out.shape[:2]) / 120))
    for mask, colour in masks:
        if mask.shape == out.shape[:2]:
            out[contour(mask, width)] = colour
    return out


# ---- 2D segmentation ------------------------------------------------------------------------------------
def _segmentation(run: Run) -> str:
    parts = []
    for path in sorted(run.samples.glob("*.csv")):
        name, rows = path.stem, _read_csv(path)
        dice = np.array([float(r["Dice"]) for r in rows])
        parts.append(
            f"<h4>test set {html.escape(name)}: {len(rows)} images, per-image Dice mean {dice.mean():.4f}, "
            f"median {np.median(dice):.4f}, min {dice.min():.4f}, max {dice.max():.4f}</h4>"
        )
        pictures = path.with_suffix(".npz")
        if not pictures.is_file():
            continue
        with np.load(pictures) as z:
            arrays = {k: z[k] for k in z.files}
        n = len(arrays["names"])
        fig, axes = figure(n, 3, figsize=(7.5, 2.5 * n), squeeze=False)
        for k in range(n):
            image, gt, pred = arrays[f"image_{k}"], arrays[f"gt_{k}"], arrays[f"pred_{k}"]
            panels = [
                (image, "image"),
                (_draw_contours(image, (gt, GREEN)), "ground truth (green)"),
                (_draw_contours(image, (gt, GREEN), (pred, RED)), "prediction (red)"),
            ]
            for ax, (picture, title) in zip(axes[k], panels):
                ax.imshow(picture)
                ax.axis("off")
                ax.set_title(
                    f"{arrays['which'][k]} {arrays['names'][k]}: Dice {arrays['dice'][k]:.3f}\n{title}", fontsize=8
                )
        parts.append(_img(png_uri(fig), f"worst and best test images of {name} by Dice"))
        table_rows = [
            [r["name"], *(f"{float(r[c]):.4f}" for c in ("Dice", "IoU", "Precision", "Recall"))]
            for r in sorted(rows, key=lambda r: float(r["Dice"]))
        ]
        if len(table_rows) > 10:
            table_rows = [*table_rows[:5], ["…", "", "", "", ""], *table_rows[-5:]]
        parts.append(
            _simple_table(["image", "Dice", "IoU", "Precision", "Recall"], table_rows, f"{name}: images by Dice")
        )
    return "".join(parts)


# ---- sentiment ------------------------------------------------------------------------------------------
def _regression(run: Run) -> str:
    rows = _read_csv(run.samples / "test.csv")
    label = np.array([float(r["label"]) for r in rows])
    pred = np.array([float(r["prediction"]) for r in rows])
    fig, (scatter, confusion) = figure(1, 2, figsize=(10, 4.2))
    scatter.scatter(label, pred, s=8, alpha=0.6)
    scatter.plot([-3, 3], [-3, 3], color="grey", linestyle="--", linewidth=1, label="prediction = truth")
    scatter.set_xlabel("true sentiment (-3 … 3)")
    scatter.set_ylabel("predicted sentiment")
    scatter.set_title(f"test: predicted vs true ({len(rows)} utterances)")
    scatter.legend(fontsize=7)
    classes = np.arange(-3, 4)
    t = np.round(np.clip(label, -3, 3)).astype(int) + 3  # as MMSA's Mult_acc_7: clip, round half to even
    p = np.round(np.clip(pred, -3, 3)).astype(int) + 3
    matrix = np.zeros((7, 7), dtype=int)
    np.add.at(matrix, (t, p), 1)
    confusion.imshow(matrix, cmap="Blues")
    for i in range(7):
        for j in range(7):
            if matrix[i, j]:
                colour = "white" if matrix[i, j] > matrix.max() / 2 else "black"
                confusion.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7, color=colour)
    confusion.set_xticks(range(7), [str(c) for c in classes])
    confusion.set_yticks(range(7), [str(c) for c in classes])
    confusion.set_xlabel("predicted class")
    confusion.set_ylabel("true class")
    acc7 = float(np.trace(matrix) / max(matrix.sum(), 1))
    confusion.set_title(f"Acc-7 confusion matrix (accuracy {acc7:.4f})")
    mae = float(np.mean(np.abs(pred - label)))
    return f"<p>{len(rows)} test utterances, MAE {mae:.4f}, Acc-7 {acc7:.4f}.</p>" + _img(
        png_uri(fig), "predicted vs true sentiment and Acc-7 confusion matrix"
    )


# ---- re-identification ----------------------------------------------------------------------------------
def _retrieval(run: Run) -> str:
    import matplotlib.patches

    payload = json.loads((run.samples / "test.json").read_text(encoding="utf-8"))
    queries = payload["queries"]
    aps = np.array([np.nan if q["AP"] is None else q["AP"] for q in queries])
    order = np.argsort(np.nan_to_num(aps, nan=-1.0), kind="stable")
    rows = [
        [
            "/".join(Path(queries[i]["query"]).parts[-3:]),
            str(queries[i]["pid"]),
            "" if np.isnan(aps[i]) else f"{aps[i]:.4f}",
            str(queries[i]["first_match"] or "none"),
            " ".join("✓" if e["same_id"] else "✗" for e in queries[i]["top"]),
        ]
        for i in order[:8]
    ]
    parts = [
        f"<p>{len(queries)} test queries ({payload['protocol']} protocol, {payload['metric']} distance); "
        f"mean AP {np.nanmean(aps):.4f}. Worst queries by AP:</p>",
        _simple_table(["query", "identity", "AP", "first match rank", "top-10 (✓ same identity)"], rows),
    ]
    pictures = run.samples / "test.npz"
    if pictures.is_file():
        with np.load(pictures) as z:
            arrays = {k: z[k] for k in z.files}
        picked = [int(i) for i in arrays["queries"]]
        top = max((len(queries[i]["top"]) for i in picked), default=0)
        if picked:
            fig, axes = figure(len(picked), top + 1, figsize=(1.2 * (top + 1), 2.0 * len(picked)), squeeze=False)
            for k, qi in enumerate(picked):
                cells = [(arrays[f"query_{k}"], "black", f"query AP {aps[qi]:.2f}")]
                cells += [
                    (arrays[f"gallery_{k}_{r}"], "green" if e["same_id"] else "red", f"{r + 1}")
                    for r, e in enumerate(queries[qi]["top"])
                ]
                for c, ax in enumerate(axes[k]):
                    ax.axis("off")
                    if c < len(cells):
                        picture, colour, title = cells[c]
                        ax.imshow(picture)
                        ax.set_title(title, fontsize=7)
                        ax.add_patch(
                            matplotlib.patches.Rectangle(
                                (0, 0), 1, 1, transform=ax.transAxes, fill=False, edgecolor=colour, linewidth=3
                            )
                        )
            parts.append("<p>Rank lists of the worst queries: green border = same identity, red = another.</p>")
            parts.append(_img(png_uri(fig), "rank lists of the worst test queries"))
    return "".join(parts)


# ---- 3D segmentation ------------------------------------------------------------------------------------
def _grey(image: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(image, [1, 99]) if image.size else (0.0, 1.0)
    return (np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)


def _volumes(run: Run) -> str:
    rows = _read_csv(run.samples / "test.csv")
    columns = [c for c in rows[0] if c != "case"] if rows else []
    ordered = sorted(rows, key=lambda r: float(r["mean_dice"]))
    shown = ordered if len(ordered) <= 12 else ordered[:6] + ordered[-6:]
    parts = [
        f"<p>{len(rows)} test cases; per case Dice and NSD (0-1) and HD95 (mm) per class, worst first.</p>",
        _simple_table(["case", *columns], [[r["case"], *(f"{float(r[c]):.4f}" for c in columns)] for r in shown]),
    ]
    pictures = run.samples / "test.npz"
    if pictures.is_file():
        with np.load(pictures) as z:
            arrays = {k: z[k] for k in z.files}
        cases = [str(c) for c in arrays["cases"]]
        dice = {r["case"]: float(r["mean_dice"]) for r in rows}
        fig, axes = figure(len(cases), 3, figsize=(9, 3.2 * len(cases)), squeeze=False)
        for k, case in enumerate(cases):
            for axis, plane in enumerate(("sagittal (axis 0)", "coronal (axis 1)", "axial (axis 2)")):
                image, label, pred = (np.rot90(arrays[f"{k}_{axis}_{key}"]) for key in ("image", "label", "pred"))
                masks = [(label == c, GREEN) for c in np.unique(label) if c > 0]
                masks += [(pred == c, RED) for c in np.unique(pred) if c > 0]
                ax = axes[k][axis]
                ax.imshow(_draw_contours(_grey(image), *masks))
                ax.axis("off")
                ax.set_title(
                    f"{arrays['which'][k]} {case} (mean Dice {dice.get(case, float('nan')):.3f})\n{plane}", fontsize=8
                )
        parts.append("<p>Slices through the structure: label contours green, prediction red.</p>")
        parts.append(_img(png_uri(fig), "worst and best test cases, three planes"))
    return "".join(parts)


SECTIONS: dict[str, tuple[str, Callable[[Run], str], str]] = {
    "segmentation": ("2D segmentation: worst and best test images", _segmentation, "*.csv"),
    "regression": ("sentiment: test predictions", _regression, "test.csv"),
    "retrieval": ("re-identification: worst queries", _retrieval, "test.json"),
    "segmentation3d": ("3D segmentation: worst and best test cases", _volumes, "test.csv"),
}


def samples_section(run: Run) -> tuple[str, str]:
    """``(title, html)`` of what the model of ``run`` did on its test samples; a note when the run holds no
    per-sample results (made before gpfuse wrote them: ``gpfuse eval RUN`` adds them)."""
    title, render, pattern = SECTIONS[run.task]
    if not any(run.samples.glob(pattern)):
        return title, (
            f'<p class="note">{html.escape(str(run.path))} holds no per-sample test results '
            f"(samples/{pattern}); <code>gpfuse eval {html.escape(str(run.path))}</code> writes them.</p>"
        )
    return title, render(run)
