"""Colo-Pair polyp re-identification layout (GPF-Net): ``<root>/resized_frame/<video>/{1,2}/*.jpg`` and a
report table (``.xlsx`` or ``.csv``) with columns ``id`` and ``Eng_text``.

Each video is one identity (``pid`` = index in the sorted video list); folder ``1`` is view 1 (camid 0),
folder ``2`` view 2 (camid 1). A video's report is the row whose ``id`` is the video name without its
last character (``ab1`` and ``ab2`` -> patient ``ab``), so videos of one patient share a report.

Folds (spec): the sorted videos are cut into ``num_folds`` contiguous blocks with ``np.array_split``
(the first ``N % num_folds`` blocks one longer), and fold ``k`` tests block ``num_folds - 1 - k``; for
31 videos and 4 folds that is exactly fold 0 = [24:31], 1 = [16:24], 2 = [8:16], 3 = [0:8]. Folds are by
video, as in the paper: two videos of one patient may fall on both sides (they share the report text).
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np

from gpfuse.data.images import IMAGE_SUFFIXES
from gpfuse.data.reid import ReIDItem, ReIDSplit, carve_validation, relabel_train

__all__ = ["REPORT_COLUMNS", "colo_pair_fold_videos", "load_colo_pair", "patient_id", "read_report_table"]

log = logging.getLogger(__name__)

REPORT_COLUMNS = ("id", "Eng_text")
_VIEWS = ("1", "2")


def patient_id(video: str) -> str:
    """Patient of a video: its name without the last character (``"gjh2"`` -> ``"gjh"``)."""
    if len(video) < 2:
        raise ValueError(f"Colo-Pair video name {video!r} is too short to hold a patient id and a video number")
    return video[:-1]


def colo_pair_fold_videos(videos: list[str], fold: int, num_folds: int = 4) -> list[str]:
    """The test videos of ``fold`` (see the module docstring for the rule) out of the sorted ``videos``."""
    videos = sorted(videos)
    if not 2 <= num_folds <= len(videos):
        raise ValueError(f"num_folds must be in [2, {len(videos)}] for {len(videos)} videos, got {num_folds}")
    if not 0 <= fold < num_folds:
        raise ValueError(f"fold must be in [0, {num_folds - 1}], got {fold}")
    blocks = np.array_split(np.arange(len(videos)), num_folds)
    return [videos[i] for i in blocks[num_folds - 1 - fold]]


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def _table_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8-sig") as f:
            rows = [[_cell(c) for c in r] for r in csv.reader(f)]
    elif suffix in (".xlsx", ".xlsm"):
        import openpyxl

        try:
            wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
        except Exception as err:
            raise ValueError(f"{path}: not a readable .xlsx ({type(err).__name__}: {err})") from err
        try:
            rows = [[_cell(c) for c in r] for r in wb.worksheets[0].iter_rows(values_only=True)]
        finally:
            wb.close()
    else:
        raise ValueError(f"{path}: report table must be .csv or .xlsx, got {suffix!r}")
    rows = [r for r in rows if any(r)]
    if not rows:
        raise ValueError(f"{path}: report table is empty")
    return rows[0], rows[1:]


def read_report_table(path: str | Path) -> dict[str, str]:
    """Patient id -> ``Eng_text`` from a ``.csv`` or ``.xlsx`` (first sheet) with columns ``id``, ``Eng_text``.

    Texts are stripped (an empty text stays ``""``); two rows with one id and different texts are an error.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Colo-Pair report table not found: {path}")
    header, rows = _table_rows(path)
    missing = [c for c in REPORT_COLUMNS if c not in header]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; found {header}")
    i_id, i_text = header.index("id"), header.index("Eng_text")
    reports: dict[str, str] = {}
    for n, row in enumerate(rows, 2):
        row = row + [""] * (len(header) - len(row))
        pid, text = row[i_id], row[i_text]
        if not pid:
            if text:
                raise ValueError(f"{path}, row {n}: report without an id")
            continue
        if pid in reports and reports[pid] != text:
            raise ValueError(f"{path}, row {n}: id {pid!r} appears twice with different Eng_text")
        reports[pid] = text
    return reports


def _default_table(root: Path) -> Path:
    found = sorted(
        p
        for p in root.iterdir()
        if p.is_file() and not p.name.startswith((".", "~$")) and p.suffix.lower() in (".xlsx", ".csv")
    )
    if not found:
        raise FileNotFoundError(f"{root}: no report table (*.xlsx or *.csv); pass report_table=")
    if len(found) > 1:
        raise ValueError(f"{root}: several report tables {[p.name for p in found]}; pass report_table=")
    return found[0]


def _scan_videos(frames: Path) -> dict[str, dict[int, list[str]]]:
    """video -> camid -> sorted image paths, checking both view folders exist and are non-empty."""
    videos: dict[str, dict[int, list[str]]] = {}
    for video_dir in sorted(p for p in frames.iterdir() if p.is_dir() and not p.name.startswith(".")):
        views: dict[int, list[str]] = {}
        for camid, view in enumerate(_VIEWS):
            view_dir = video_dir / view
            if not view_dir.is_dir():
                raise FileNotFoundError(f"Colo-Pair video {video_dir.name!r}: view folder missing: {view_dir}")
            images = sorted(
                str(p)
                for p in view_dir.iterdir()
                if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
            )
            if not images:
                raise ValueError(f"Colo-Pair video {video_dir.name!r}: no images in view folder {view_dir}")
            views[camid] = images
        videos[video_dir.name] = views
    if not videos:
        raise ValueError(f"{frames}: no video folders")
    return videos


def load_colo_pair(
    root: str | Path,
    fold: int,
    num_folds: int = 4,
    val_videos: int = 2,
    report_table: str | Path | None = None,
    seed: int = 0,
    missing_report: str = "error",
) -> tuple[ReIDSplit, dict[str, str]]:
    """One cross-validation fold of a Colo-Pair folder.

    Args:
        root: folder holding ``resized_frame/`` (and the report table unless ``report_table`` is given).
        fold: 0..num_folds-1; test videos as in the module docstring.
        val_videos: training videos moved (seeded by ``(seed, fold)``) to a validation query (view 1) /
            gallery (view 2), for model selection; never test videos. 0 for none.
        report_table: ``.csv``/``.xlsx`` with ``id``, ``Eng_text``; default the single one in ``root``.
        missing_report: ``"error"`` (default) raises on a patient without a row or with an empty text;
            ``"empty"`` keeps such videos with report ``""`` (the model then runs image-only for them)
            and logs a WARNING naming them.

    Returns:
        ``(split, reports)``: query = view-1 and gallery = view-2 images of the test videos (pid = index
        in the sorted video list, camid 0/1, group = video); train = both views of the other training
        videos, pids relabelled; ``reports`` maps every video to its patient's report.
    """
    if missing_report not in ("error", "empty"):
        raise ValueError(f"missing_report must be one of ['error', 'empty'], got {missing_report!r}")
    root = Path(root)
    frames = root / "resized_frame"
    if not frames.is_dir():
        raise FileNotFoundError(f"Colo-Pair folder not found: {frames}")
    scanned = _scan_videos(frames)
    videos = sorted(scanned)

    table = Path(report_table) if report_table is not None else _default_table(root)
    by_patient = read_report_table(table)
    reports, problems = {}, []
    for video in videos:
        patient = patient_id(video)
        if patient not in by_patient:
            problems.append(f"video {video!r}: patient {patient!r} has no row in {table}")
        elif not by_patient[patient]:
            problems.append(f"video {video!r}: patient {patient!r} has an empty Eng_text in {table}")
        reports[video] = by_patient.get(patient, "")
    if problems:
        if missing_report == "error":
            raise ValueError("; ".join(problems) + " (missing_report='empty' keeps them with no text)")
        log.warning("%d Colo-Pair video(s) kept with an empty report: %s", len(problems), "; ".join(problems))

    test_videos = set(colo_pair_fold_videos(videos, fold, num_folds))
    items = {
        v: [ReIDItem(path, pid, camid, v) for camid, paths in scanned[v].items() for path in paths]
        for pid, v in enumerate(videos)
    }
    train_items = [it for v in videos if v not in test_videos for it in items[v]]
    test_items = [it for v in videos if v in test_videos for it in items[v]]
    train_items, val_query, val_gallery = carve_validation(
        train_items, val_videos, [seed, fold], what=f"the {len(videos) - len(test_videos)} training videos"
    )
    split = ReIDSplit(
        train=relabel_train(train_items),
        query=[it for it in test_items if it.camid == 0],
        gallery=[it for it in test_items if it.camid == 1],
        val_query=val_query,
        val_gallery=val_gallery,
        name=f"Colo-Pair {root.name} fold {fold}/{num_folds}",
    )
    return split.check(), reports
