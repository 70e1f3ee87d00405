"""The browser harness of tests/browser.py sees what a reader would (broken images, console errors, files fetched
from outside, blank pages) and does not hang on a hung page; the demo ends with one self-contained report. The
reports of every task kind open in Chromium in tests/test_report.py, beside the runs they are built from. Skipped
only where Chromium is not installed (``make browser`` installs it)."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
import yaml
from PIL import Image

from browser import MIN_PIXEL_STD, open_page, pixel_std
from conftest import mosi_data, run_gpfuse, tiny_grf
from gpfuse.data.synthetic import write_synthetic_mosi

pytestmark = pytest.mark.slow

TRAIN = {"max_epochs": 1, "accelerator": "cpu", "warmup_epochs": 0}


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
        open_page(page, timeout=2.0)


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
