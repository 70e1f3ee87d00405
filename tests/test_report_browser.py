"""gpfuse's HTML reports in a real browser: headless Chromium loads the report of tiny one-epoch runs of every task
kind (and of all of them side by side) with no console error, every image decoded, nothing fetched from outside the
file, and a page that is not blank. Skipped only where Chromium is not installed (``make browser`` installs it)."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
import yaml
from PIL import Image

from browser import NOT_FOUND, find_chromium, open_page, pixel_std
from conftest import colo_pair_data, mosi_data, polyp_folder_data, run_gpfuse, tiny_bipvl, tiny_grf
from gpfuse.config import validate_config
from gpfuse.data.synthetic import write_synthetic_mosi
from gpfuse.data.synthetic_polyp import write_synthetic_polyp_folder
from gpfuse.data.synthetic_reid import write_synthetic_colo_pair
from gpfuse.data.synthetic_volumes import write_synthetic_decathlon
from gpfuse.tasks.runner import run_dir_for, train

pytestmark = pytest.mark.slow

MIN_PIXEL_STD = 2.0  # a blank page is 0; a heading alone on white is about 10
TRAIN = {"max_epochs": 1, "accelerator": "cpu", "warmup_epochs": 0}


@pytest.fixture(scope="module")
def chromium() -> str:
    path = find_chromium()
    if path is None:
        pytest.skip(NOT_FOUND)
    return path


def _sections(root) -> dict[str, dict]:
    """Config sections (data, model, train extras) of a tiny run per task kind, on data generated under ``root``."""
    mosi = write_synthetic_mosi(root / "mosi", n_videos=10, segments_per_video=4)
    colo = write_synthetic_colo_pair(root / "colo", n_videos=10, frames_per_view=2, size=48)
    polyps = write_synthetic_polyp_folder(root / "polyps", n_images=16, size=40, seed=0)
    volumes = write_synthetic_decathlon(root / "dec", n_cases=6, shape=(32, 64, 32), num_classes=3)
    volume = tiny_bipvl(volumes, root / "runs", test_cases=2)
    return {
        "regression": {"data": mosi_data(mosi, root / "cache"), "model": tiny_grf(), "train": {}},
        "retrieval": {
            "data": {**colo_pair_data(colo), "val_ids": 2},
            "model": {
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
            },
            "train": {"monitor": "valid/mAP", "monitor_mode": "max"},
        },
        "segmentation": {
            "data": polyp_folder_data(polyps),
            "model": {"name": "ea_dk", "encoder": "efficientnet_lite0", "encoder_weights": None, "channels": 16},
            "train": {"monitor": "valid/Dice", "monitor_mode": "max"},
        },
        "segmentation3d": {
            "data": volume["data"],
            "model": volume["model"],
            "train": {"monitor": "valid/mean_dice", "monitor_mode": "max"},
        },
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory, chromium):
    """Run folder per task kind: each trained one epoch on generated data."""
    root = tmp_path_factory.mktemp("report_runs")
    folders = {}
    for kind, section in _sections(root).items():
        cfg = validate_config(
            {
                "name": f"tiny_{kind}",
                "output_dir": str(root / "runs"),
                "data": section["data"],
                "model": section["model"],
                "train": {**TRAIN, **section["train"]},
            },
            "test",
        )
        train(cfg)
        folders[kind] = run_dir_for(cfg)
    return folders


def _assert_renders(html) -> None:
    check = open_page(html)
    assert check.console_errors == [], f"console errors in {html}: {check.console_errors}"
    assert check.images > 0, f"{html} shows no <img>"
    assert check.broken_images == [], f"images that did not decode in {html}: {check.broken_images}"
    assert check.requests == [], f"{html} is not self-contained, it fetched {check.requests}"
    assert pixel_std(check.screenshot) > MIN_PIXEL_STD, f"{html} renders blank"


@pytest.mark.parametrize("kind", ["regression", "retrieval", "segmentation", "segmentation3d"])
def test_report_of_one_run_renders_in_chromium(runs, kind, tmp_path):
    from gpfuse.report import write_report

    _assert_renders(write_report([runs[kind]], tmp_path / f"{kind}.html"))


def test_report_comparing_runs_of_every_kind_renders_in_chromium(runs, tmp_path):
    from gpfuse.report import write_report

    _assert_renders(write_report(list(runs.values()), tmp_path / "all.html"))


def test_the_harness_sees_broken_images_console_errors_outside_files_and_blank_pages(tmp_path, chromium):
    page = tmp_path / "broken.html"
    page.write_text(
        "<!doctype html><h1>broken</h1>"
        '<img alt="missing" src="missing.png"><img alt="corrupt" src="data:image/png;base64,AAAA">'
        "<script>console.error('boom'); setTimeout(() => undefined_function(), 0);</script>"
    )
    check = open_page(page)
    assert check.images == 2 and sorted(check.broken_images) == ["corrupt", "missing"]
    assert "boom" in check.console_errors
    assert any("undefined_function is not defined" in text for text in check.console_errors)
    assert any("ERR_FILE_NOT_FOUND" in text for text in check.console_errors)
    assert check.requests == [(tmp_path / "missing.png").as_uri()]
    assert pixel_std(check.screenshot) > MIN_PIXEL_STD  # the heading
    blank = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 255, np.uint8)).save(blank, "PNG")
    assert pixel_std(blank.getvalue()) == 0.0


def test_a_hung_page_fails_in_time_instead_of_hanging(tmp_path, chromium):
    page = tmp_path / "hang.html"
    page.write_text("<!doctype html><script>while (true) {}</script>")
    with pytest.raises(TimeoutError, match="chromium gave no answer"):
        open_page(page, timeout=10.0)


def test_demo_ends_with_one_self_contained_report_of_its_runs(tmp_path):
    mosi = write_synthetic_mosi(tmp_path / "mosi", n_videos=10, segments_per_video=4)
    config = tmp_path / "tiny_demo.yaml"
    raw = {
        "name": "tiny_demo_grf",
        "output_dir": str(tmp_path / "runs"),
        "data": mosi_data(mosi, tmp_path / "cache"),
        "model": tiny_grf(),
        "train": TRAIN,
    }
    config.write_text(yaml.safe_dump(raw))
    code, out = run_gpfuse("demo", "--config", str(config))
    assert code == 0, out
    reports = list((tmp_path / "runs").glob("demo_report_*.html"))
    assert len(reports) == 1 and f"report: {reports[0]}" in out
    html = reports[0].read_text()
    assert "tiny_demo_grf" in html and "<img" in html
    sources = re.findall(r'src="([^"]*)"', html)
    assert sources and all(src.startswith("data:") for src in sources), "the report links files instead of embedding"
