"""``gpfuse report``: per-sample test results written at evaluation (RUN/samples/) and the self-contained HTML
report (+ markdown tables) built from tiny runs of the four task kinds; each kind's report, and one of all four side
by side, opens in headless Chromium with no console error, every image decoded, nothing fetched from outside the
file, and a page that is not blank (skipped only where Chromium is not installed: ``make browser``)."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from browser import assert_renders
from conftest import colo_pair_data, mosi_data, polyp_folder_data, run_gpfuse, tiny_bipvl, tiny_grf
from gpfuse.config import validate_config
from gpfuse.data.synthetic import write_synthetic_mosi
from gpfuse.data.synthetic_polyp import write_synthetic_polyp_folder
from gpfuse.data.synthetic_reid import write_synthetic_colo_pair
from gpfuse.data.synthetic_volumes import write_synthetic_decathlon
from gpfuse.report import metrics_tables, write_report
from gpfuse.report.collect import collect
from gpfuse.report.tables import higher_is_better
from gpfuse.tasks.runner import fold_name, run_dir_for, train
from gpfuse.utils.environment import summary_line

pytestmark = pytest.mark.slow


def _train(raw: dict) -> Path:
    config = validate_config(raw, "test")
    train(config, command="gpfuse train tiny.yaml")
    return run_dir_for(config)


@pytest.fixture(scope="module")
def sentiment(tmp_path_factory) -> dict[str, Path]:
    """Root ``sent`` with two seeds (1 epoch) and root ``sent_small`` with one run of a smaller model."""
    base = tmp_path_factory.mktemp("sent")
    root = write_synthetic_mosi(base / "mosi", n_videos=10, segments_per_video=4)

    def raw(name: str, seed: int, **model) -> dict:
        return {
            "name": name,
            "output_dir": str(base / "runs"),
            "data": mosi_data(root, base / "cache", text_len=24),
            "model": tiny_grf(**model),
            "train": {"max_epochs": 1, "warmup_epochs": 0, "accelerator": "cpu", "seed": seed},
        }

    for seed in (1, 2):
        _train(raw("sent", seed))
    _train(raw("sent_small", 1, d_model=8))
    return {"a": base / "runs" / "sent", "b": base / "runs" / "sent_small"}


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("seg")
    folder = write_synthetic_polyp_folder(base / "polyp", n_images=16, size=40, per_sequence=4, seed=0)
    return _train(
        {
            "name": "seg",
            "output_dir": str(base / "runs"),
            "data": {**polyp_folder_data(folder), "eval_batch_size": 4},
            "model": {"name": "ea_dk", "encoder": "efficientnet_lite0", "encoder_weights": None, "channels": 16},
            "train": {"max_epochs": 1, "accelerator": "cpu", "monitor": "valid/Dice", "monitor_mode": "max"},
        }
    )


@pytest.fixture(scope="module")
def reid_run(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("reid")
    root = write_synthetic_colo_pair(base / "colo", n_videos=10, frames_per_view=2, size=48)
    model = {
        "name": "gpf_net",
        "image_encoder": "efficientnet_lite0",
        "image_weights": None,
        "dim": 32,
        "num_fusion_layers": 1,
        "fusion_heads": 4,
        "fusion_ffn": 64,
        "final_layers": 1,
        "final_ffn": 64,
        "max_text_len": 16,
    }
    return _train(
        {
            "name": "reid",
            "output_dir": str(base / "runs"),
            "data": {**colo_pair_data(root), "val_ids": 2},
            "model": model,
            "train": {"max_epochs": 1, "accelerator": "cpu", "monitor": "valid/mAP", "monitor_mode": "max"},
        }
    )


@pytest.fixture(scope="module")
def volume_run(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("vol")
    root = write_synthetic_decathlon(base / "dec", n_cases=5, shape=(32, 64, 32), num_classes=3)
    return _train(tiny_bipvl(root, base / "runs", name="vol", test_cases=2))


# ---- helpers ------------------------------------------------------------------------------------------------
def _images(page: str) -> list[Image.Image]:
    """Every embedded image, decoded (fails on a broken one)."""
    images = []
    for data in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page):
        image = Image.open(io.BytesIO(base64.b64decode(data)))
        image.load()
        images.append(image)
    return images


def _table(page: str, caption: str) -> dict[tuple[str, str], dict[str, str]]:
    """``{(row label, metric): {"value", "diff", "best"}}`` of the table with ``caption``."""
    match = re.search(rf"<caption>{re.escape(caption)}</caption>(.*?)</table>", page, re.S)
    assert match, f"no table {caption!r}"
    cells = {}
    for label, row in re.findall(r"<tr><th>([^<]*)</th>(.*?)</tr>", match.group(1), re.S):
        for attrs, inner in re.findall(r"<td([^>]*)>(.*?)</td>", row, re.S):
            metric = re.search(r'data-metric="([^"]*)"', attrs)
            value = re.search(r'data-value="([^"]*)"', attrs)
            diff = re.search(r'data-diff="([^"]*)"', attrs)
            assert metric
            cells[(label, metric.group(1))] = {
                "value": value.group(1) if value else "",
                "diff": diff.group(1) if diff else "",
                "best": "best" in attrs,
                "text": inner,
            }
    return cells


def _check_self_contained(page: str) -> None:
    assert page.startswith("<!DOCTYPE html>")
    assert "<script" not in page and "http://" not in page and "https://" not in page
    for section in ("runs", "metrics", "curves", "samples"):
        assert f'<section id="{section}">' in page


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


# ---- tests --------------------------------------------------------------------------------------------------
def test_direction_of_metrics():
    assert higher_is_better("Dice") and higher_is_better("own/mAP") and higher_is_better("Mult_acc_7")
    assert higher_is_better("nsd/Anterior") and higher_is_better("mean_nsd") and higher_is_better("Corr")
    assert not higher_is_better("MAE") and not higher_is_better("kvasir/MAE") and not higher_is_better("loss")
    assert not higher_is_better("mean_hd95") and not higher_is_better("hd95/Anterior")


def test_sentiment_root_report_holds_seeds_mean_and_predictions(sentiment, tmp_path):
    runs = sorted(sentiment["a"].glob("seed_*"))
    metrics = [json.loads((r / "metrics.json").read_text()) for r in runs]
    # per-utterance predictions written at evaluation, one per test id, agreeing with the run's MAE
    samples = _rows(runs[0] / "samples" / "test.csv")
    test_ids = (runs[0] / "splits" / "test.txt").read_text().split()
    assert [r["id"] for r in samples] == test_ids
    mae = np.mean([abs(float(r["prediction"]) - float(r["label"])) for r in samples])
    assert mae == pytest.approx(metrics[0]["test"]["MAE"], abs=1e-4)

    out = write_report([sentiment["a"]], tmp_path / "r.html")
    page = out.read_text()
    _check_self_contained(page)
    assert "<details><summary>config.yaml</summary>" in page and "gpfuse train tiny.yaml" in page
    env = json.loads((runs[0] / "environment.json").read_text())  # where each run trained, as it recorded it
    assert f"<th>machine</th><td>{html.escape(summary_line(env))}</td>" in page
    assert f"<td>test</td><td>{len(test_ids)}</td>" in page
    table = _table(page, "sent: test, 2 runs")
    for run, m in zip(runs, metrics):
        assert float(table[(run.name, "MAE")]["value"]) == m["test"]["MAE"]
    values = [m["test"]["Mult_acc_7"] for m in metrics]
    assert float(table[("mean ± std", "Mult_acc_7")]["value"]) == pytest.approx(np.mean(values))
    assert f"± {np.std(values, ddof=1):.4f}" in table[("mean ± std", "Mult_acc_7")]["text"]
    assert f"Acc-7 {metrics[0]['test']['Mult_acc_7']:.4f}" in page  # the confusion matrix's accuracy
    images = _images(page)
    # loss, monitored metric, gates, scatter + confusion matrix
    assert len(images) == 4 and all(min(i.size) > 50 for i in images)
    assert "fusion gates" in page


def test_comparison_marks_the_best_and_differences_and_writes_markdown(sentiment, tmp_path):
    code, output = run_gpfuse(
        "report", sentiment["a"], sentiment["b"], "--out", tmp_path / "c.html", "--markdown", tmp_path / "c.md"
    )
    assert code == 0, output
    page = (tmp_path / "c.html").read_text()
    _check_self_contained(page)
    table = _table(page, "comparison: test")
    a = [json.loads(p.read_text())["test"] for p in sorted(sentiment["a"].glob("seed_*/metrics.json"))]
    b = json.loads((sentiment["b"] / "seed_1" / "metrics.json").read_text())["test"]
    for metric in ("MAE", "Corr", "Mult_acc_7"):
        mean_a = float(np.mean([m[metric] for m in a]))
        assert float(table[("sent", metric)]["value"]) == pytest.approx(mean_a)
        assert float(table[("sent_small", metric)]["diff"]) == pytest.approx(b[metric] - mean_a)
        best = max(mean_a, b[metric]) if higher_is_better(metric) else min(mean_a, b[metric])
        assert table[("sent", metric)]["best"] == (mean_a == pytest.approx(best))
        assert table[("sent_small", metric)]["best"] == (b[metric] == pytest.approx(best))
    markdown = (tmp_path / "c.md").read_text()
    assert "**comparison: test**" in markdown and "| | loss ↓ |" in markdown
    test_part = markdown.split("**comparison: test**")[1]
    row = next(line for line in test_part.splitlines() if line.startswith("| sent_small |"))
    assert f"{b['MAE']:.4f} ({b['MAE'] - np.mean([m['MAE'] for m in a]):+.4f})" in row
    assert markdown.count("**") >= 4  # titles and the best values in bold


def test_experiments_and_task_kinds_are_never_averaged_or_compared_together(sentiment, seg_run, tmp_path):
    # a root holding two experiments (configs sent and sent_small) is two groups, not one mean over 3 runs
    groups = collect([sentiment["a"].parent])
    assert [(g.label, len(g.runs)) for g in groups] == [("sent", 2), ("sent_small", 1)]
    tables = metrics_tables(collect([sentiment["a"].parent, seg_run]))
    titles = [t.title for t in tables]
    assert titles.count("comparison: test") == 1 and any(t.startswith(f"{seg_run.name}: metrics") for t in titles)
    assert all(not {"Corr", "Dice"} <= set(t.columns) for t in tables)
    page = write_report([sentiment["a"], seg_run], tmp_path / "k.html").read_text()
    assert "regression: loss per epoch" in page and "segmentation: loss per epoch" in page


def test_the_folds_of_one_experiment_are_one_group(sentiment, tmp_path):
    # the runs of `gpfuse train --folds 0,1` (named by fold_name): one experiment, averaged over its folds
    for fold, seed in ((0, "seed_1"), (1, "seed_2")):
        run = tmp_path / "cv" / f"fold_{fold}" / "seed_1"
        shutil.copytree(sentiment["a"] / seed, run)
        config = yaml.safe_load((run / "config.yaml").read_text())
        (run / "config.yaml").write_text(yaml.safe_dump({**config, "name": fold_name("cv", fold)}, sort_keys=False))
    groups = collect([tmp_path / "cv", sentiment["b"]])
    assert [(g.label, len(g.runs)) for g in groups] == [("cv", 2), ("sent_small", 1)]
    folds = metrics_tables(groups[:1])
    assert [r[0] for r in folds[-1].rows] == ["fold_0/seed_1", "fold_1/seed_1", "mean ± std"]


def test_segmentation_report_shows_worst_and_best_images(seg_run, tmp_path):
    metrics = json.loads((seg_run / "metrics.json").read_text())
    rows = _rows(seg_run / "samples" / "held_out.csv")
    assert len(rows) == int(json.loads((seg_run / "data_stats.json").read_text())["images"]["test_held_out"])
    # the test Dice is the mean of the per-image Dice written beside it
    assert np.mean([float(r["Dice"]) for r in rows]) == pytest.approx(metrics["test"]["held_out/Dice"], abs=1e-5)
    with np.load(seg_run / "samples" / "held_out.npz") as z:
        assert z["image_0"].ndim == 3 and z["gt_0"].dtype == bool and z["pred_0"].shape == z["gt_0"].shape
    page = write_report([seg_run], tmp_path / "s.html", markdown=tmp_path / "s.md").read_text()
    _check_self_contained(page)
    table = _table(page, f"{seg_run.name}: metrics (best epoch {metrics['best_epoch']})")
    assert float(table[("test/held_out", "Dice")]["value"]) == metrics["test"]["held_out/Dice"]
    assert float(table[("valid", "Sm")]["value"]) == metrics["valid"]["Sm"]
    assert "worst and best test images of held_out by Dice" in page
    assert len(_images(page)) == 4  # loss, Dice per epoch, gates, worst/best images
    assert "| test/held_out |" in (tmp_path / "s.md").read_text()


def test_reid_report_ranks_the_worst_queries(reid_run, tmp_path):
    metrics = json.loads((reid_run / "metrics.json").read_text())
    queries = json.loads((reid_run / "samples" / "test.json").read_text())["queries"]
    assert np.mean([q["AP"] for q in queries]) == pytest.approx(metrics["test"]["own/mAP"], abs=1e-5)
    assert np.mean([q["first_match"] == 1 for q in queries]) == pytest.approx(metrics["test"]["own/rank1"])
    page = write_report([reid_run], tmp_path / "r.html").read_text()
    _check_self_contained(page)
    assert "rank lists of the worst test queries" in page and "first match rank" in page
    assert (
        float(_table(page, f"{reid_run.name}: metrics (best epoch 0)")[("test", "own/mAP")]["value"])
        == (metrics["test"]["own/mAP"])
    )
    assert len(_images(page)) >= 3


def test_volume_report_shows_cases_per_class(volume_run, tmp_path):
    metrics = json.loads((volume_run / "metrics.json").read_text())
    rows = _rows(volume_run / "samples" / "test.csv")
    assert len(rows) == 2
    assert np.mean([float(r["mean_dice"]) for r in rows]) == pytest.approx(metrics["test"]["mean_dice"], abs=1e-5)
    per_class = [k for k in rows[0] if k.startswith(("dice/", "hd95/", "nsd/"))]
    assert len(per_class) == 6 and all(k in metrics["test"] for k in per_class)
    with np.load(volume_run / "samples" / "test.npz") as z:
        assert {"0_0_image", "0_2_pred", "0_1_label"} <= set(z.files)
    page = write_report([volume_run], tmp_path / "v.html").read_text()
    _check_self_contained(page)
    assert "worst and best test cases, three planes" in page and "hd95/" in page
    assert len(_images(page)) >= 2


def test_a_folder_that_is_not_a_finished_run_is_named(sentiment, tmp_path):
    code, output = run_gpfuse("report", tmp_path, "--out", tmp_path / "x.html")
    assert code == 2 and str(tmp_path) in output and "not a gpfuse run folder" in output
    unfinished = tmp_path / "root" / "seed_3"
    unfinished.mkdir(parents=True)
    (unfinished / "config.yaml").write_text((sentiment["b"] / "seed_1" / "config.yaml").read_text())
    code, output = run_gpfuse("report", tmp_path / "root", "--out", tmp_path / "x.html")
    assert code == 2 and str(unfinished) in output and "not a finished run" in output
    assert not (tmp_path / "x.html").exists()


# ---- in a browser ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(sentiment, seg_run, reid_run, volume_run) -> dict[str, Path]:
    """One run folder per task kind."""
    return {
        "regression": sorted(sentiment["a"].glob("seed_*"))[0],
        "retrieval": reid_run,
        "segmentation": seg_run,
        "segmentation3d": volume_run,
    }


@pytest.mark.parametrize("kind", ["regression", "retrieval", "segmentation", "segmentation3d"])
def test_report_of_one_run_renders_in_chromium(runs, kind, tmp_path, chromium):
    assert_renders(write_report([runs[kind]], tmp_path / f"{kind}.html"))


def test_report_comparing_runs_of_every_kind_renders_in_chromium(runs, tmp_path, chromium):
    assert_renders(write_report(list(runs.values()), tmp_path / "all.html"))
