"""Video prediction of a 2D segmentation run: ``gpfuse predict RUN video.mp4 --out out.mp4`` writes an overlay
video of the input's frame count, size and rate and a per-frame CSV that agrees with the predictor frame by
frame; bad videos and mismatched inputs/outputs get clear errors and leave no files."""

from __future__ import annotations

import contextlib
import csv
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy.ndimage import binary_dilation

import gpfuse
from conftest import SHARED_DATA, mosi_data, polyp_folder_data, run_gpfuse, tiny_grf
from gpfuse.config import dump_config, validate_config
from gpfuse.data.synthetic_polyp import write_synthetic_polyp_folder
from gpfuse.inference.video import CSV_HEADER, segment_video
from gpfuse.tasks.runner import run_dir_for, train

pytestmark = pytest.mark.slow

FRAMES, WIDTH, HEIGHT, FPS = 12, 160, 128, 10.0


@pytest.fixture(scope="module")
def kvasir_video(tmp_path_factory) -> Path:
    """12 real Kvasir-SEG images as a 160x128 mp4v video at 10 fps."""
    images = SHARED_DATA / "kvasir-seg" / "val" / "images"
    if not images.is_dir():
        pytest.skip(f"real Kvasir-SEG not found at {images} (set GPFUSE_DATA to the shared data folder)")
    path = tmp_path_factory.mktemp("video") / "kvasir.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), FPS, (WIDTH, HEIGHT))
    for image in sorted(images.iterdir())[:FRAMES]:
        writer.write(cv2.resize(cv2.imread(str(image)), (WIDTH, HEIGHT), interpolation=cv2.INTER_AREA))
    writer.release()
    return path


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory) -> Path:
    """A one-epoch EA-DK run on a synthetic polyp folder (tests/test_export.py's)."""
    with contextlib.chdir(tmp_path_factory.mktemp("run")):
        polyps = write_synthetic_polyp_folder(Path("data/polyps"), n_images=12, size=40)
        cfg = validate_config(
            {
                "name": "ea_dk",
                "output_dir": "runs",
                "data": polyp_folder_data(polyps),
                "model": {"name": "ea_dk", "encoder_weights": "imagenet", "channels": 8},  # EfficientNet-Lite0
                "train": {"max_epochs": 1, "seed": 42, "monitor": "valid/Dice", "monitor_mode": "max"},
            },
            "test",
        )
        train(cfg)
        return run_dir_for(cfg).resolve()


def read_frames(path: Path) -> list[np.ndarray]:
    """Every frame of a video, (H, W, 3) uint8 BGR."""
    capture, frames = cv2.VideoCapture(str(path)), []
    while (frame := capture.read())[0]:
        frames.append(frame[1])
    capture.release()
    return frames


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_predict_on_a_video_writes_an_overlay_video_and_a_per_frame_csv(seg_run, kvasir_video, tmp_path):
    code, output = run_gpfuse("predict", seg_run, kvasir_video, "--out", tmp_path / "out.mp4")
    assert code == 0, output
    assert "12 frames" in output and "frames/s" in output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv", "out.mp4"]  # no temporary files left
    capture = cv2.VideoCapture(str(tmp_path / "out.mp4"))
    assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(FPS)
    capture.release()
    overlays, frames = read_frames(tmp_path / "out.mp4"), read_frames(kvasir_video)
    assert len(overlays) == len(frames) == FRAMES and overlays[0].shape == (HEIGHT, WIDTH, 3)

    rows = read_rows(tmp_path / "out.csv")
    assert list(rows[0]) == CSV_HEADER and [int(r["frame"]) for r in rows] == list(range(FRAMES))
    seg = gpfuse.load(seg_run)
    for i in (0, 5, FRAMES - 1):  # the predictor on the same decoded frame, in RGB
        result = seg.predict(cv2.cvtColor(frames[i], cv2.COLOR_BGR2RGB))
        assert float(rows[i]["time_s"]) == pytest.approx(i / FPS, abs=1e-3)
        assert int(rows[i]["polyp_area_px"]) == int(result.mask.sum())
        assert float(rows[i]["max_probability"]) == pytest.approx(float(result.probability.max()), abs=1e-4)
        assert rows[i]["polyp_present"] == str(int(result.mask.any()))


def test_the_overlay_fills_the_mask_and_leaves_the_rest(seg_run, kvasir_video, tmp_path):
    seg = gpfuse.load(seg_run)
    frames = read_frames(kvasir_video)
    # a one-epoch model's masks may be all or nothing at its threshold: cut at the first frame's median instead
    seg.threshold = float(np.median(seg.predict(cv2.cvtColor(frames[0], cv2.COLOR_BGR2RGB)).probability))
    summary = segment_video(seg, kvasir_video, tmp_path / "out.avi", batch_size=5, progress=False)  # 5 + 5 + 2
    assert (summary.frames, summary.width, summary.height, summary.video_fps) == (FRAMES, WIDTH, HEIGHT, FPS)
    assert summary.csv == tmp_path / "out.csv" and summary.fps > 0
    overlays = read_frames(tmp_path / "out.avi")
    rows = read_rows(tmp_path / "out.csv")
    assert len(overlays) == len(rows) == FRAMES
    for i in (0, 7, 11):
        # the frame in the batch the video went through (5 + 5 + 2): the same arithmetic, bit for bit, at pixels
        # whose probability sits at the median threshold
        start = i // 5 * 5
        batch = [cv2.cvtColor(f, cv2.COLOR_BGR2RGB) for f in frames[start : start + 5]]
        mask = seg.predict(batch)[i - start].mask
        assert int(rows[i]["polyp_area_px"]) == int(mask.sum())
        diff = np.abs(overlays[i].astype(int) - frames[i].astype(int)).mean(axis=2)
        if i == 0:
            assert 0 < mask.sum() < mask.size
        if 0 < mask.sum() < mask.size:  # red fill inside; away from it (contour, chroma subsampling) only noise
            away = ~binary_dilation(mask, iterations=4)
            assert diff[mask].mean() > 15 > 3 * diff[away].mean(), (diff[mask].mean(), diff[away].mean())
    assert summary.frames_with_polyp == sum(r["polyp_present"] == "1" for r in rows)


def test_a_corrupt_video_is_named(seg_run, tmp_path):
    (tmp_path / "broken.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    code, output = run_gpfuse("predict", seg_run, tmp_path / "broken.mp4", "--out", tmp_path / "out.mp4")
    assert code == 2 and "broken.mp4: not a readable video" in output, output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.mp4"]


def test_a_video_of_no_frames_is_an_error_and_writes_nothing(seg_run, tmp_path):
    writer = cv2.VideoWriter(str(tmp_path / "empty.avi"), cv2.VideoWriter.fourcc(*"MJPG"), FPS, (WIDTH, HEIGHT))
    writer.release()  # an AVI of no frames: OpenCV opens it and reads nothing
    code, output = run_gpfuse("predict", seg_run, tmp_path / "empty.avi", "--out", tmp_path / "out.mp4")
    assert code == 2 and "empty.avi: the video has 0 frames" in output, output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.avi"]


@pytest.mark.parametrize(
    ("out", "message"),
    [
        (
            "preds",
            r"kvasir.mp4 is a video, so its predictions are an overlay video: --out .*preds must be a video "
            r"file \(.mp4, .*\), not a folder",
        ),
        ("out.csv", r"--out .*out.csv must be a video file \(.mp4, .*\), not '.csv'"),
    ],
    ids=["a folder", "a csv"],
)
def test_a_video_needs_a_video_out(seg_run, kvasir_video, tmp_path, out, message):
    code, output = run_gpfuse("predict", seg_run, kvasir_video, "--out", tmp_path / out)
    assert code == 2 and re.search(message, output), output
    assert list(tmp_path.iterdir()) == []


def test_an_image_folder_with_a_video_out_is_an_error(seg_run, tmp_path):
    folder = write_synthetic_polyp_folder(tmp_path / "polyps", n_images=2, size=40) / "images"
    code, output = run_gpfuse("predict", seg_run, folder, "--out", tmp_path / "out.mp4")
    assert code == 2 and f"--out {tmp_path / 'out.mp4'} is a video file, but {folder} is not a video" in output, output
    assert not (tmp_path / "out.mp4").exists()


def test_a_video_to_a_run_that_is_not_2d_segmentation_is_an_error(kvasir_video, tmp_path):
    # the check reads only the run's config: a sentiment run's config.yaml is enough
    config = validate_config(
        {"name": "grf", "data": mosi_data(tmp_path / "mosi", tmp_path / "cache"), "model": tiny_grf()}, "test"
    )
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text(dump_config(config))
    code, output = run_gpfuse("predict", tmp_path / "run", kvasir_video, "--out", tmp_path / "out.mp4")
    assert code == 2 and "video prediction is for 2D segmentation runs, this run is 'regression'" in output, output
    assert not (tmp_path / "out.mp4").exists()


# ---- --out that already holds predictions (issue 25) ---------------------------------------------------------


def test_predictions_into_a_folder_of_earlier_ones_are_refused_unless_overwrite(seg_run, tmp_path):
    folder = write_synthetic_polyp_folder(tmp_path / "polyps", n_images=4, size=40) / "images"
    out = tmp_path / "pred"
    code, output = run_gpfuse("predict", seg_run, folder, "--out", out)
    assert code == 0, output
    two = tmp_path / "two"
    two.mkdir()
    for image in sorted(folder.iterdir())[:2]:
        (two / image.name).write_bytes(image.read_bytes())
    (out / "notes.txt").write_text("mine")  # not a prediction: kept either way
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    code, output = run_gpfuse("predict", seg_run, two, "--out", out)
    assert code == 2 and f"--out {out} holds an earlier prediction" in output and "--overwrite" in output, output
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # nothing written, nothing lost
    code, output = run_gpfuse("predict", seg_run, two, "--out", out, "--overwrite")
    assert code == 0, output
    assert sorted(p.name for p in (out / "masks").iterdir()) == sorted(
        p.with_suffix(".png").name for p in two.iterdir()
    )
    assert sorted(p.name for p in (out / "overlays").iterdir()) == sorted(p.name for p in (out / "masks").iterdir())
    assert len((out / "predictions.csv").read_text().splitlines()) == 1 + 2
    assert (out / "notes.txt").read_text() == "mine"


def test_an_existing_overlay_video_is_not_replaced_without_overwrite(seg_run, kvasir_video, tmp_path):
    out = tmp_path / "out.mp4"
    out.write_bytes(b"an earlier video")
    code, output = run_gpfuse("predict", seg_run, kvasir_video, "--out", out)
    assert code == 2 and f"--out {out}: {out} exists" in output and "--overwrite" in output, output
    assert out.read_bytes() == b"an earlier video" and not out.with_suffix(".csv").exists()
    code, output = run_gpfuse("predict", seg_run, kvasir_video, "--out", out, "--overwrite")
    assert code == 0, output
    assert len(read_frames(out)) == FRAMES
