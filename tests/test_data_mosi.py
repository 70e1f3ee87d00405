"""The shared CMU-MOSI layout: the real copy (skipped when absent) and bad input."""

from __future__ import annotations

import csv
import logging

import numpy as np
import pytest

from gpfuse.data.features import SplitFeatures, load_features_npz, save_features_npz
from gpfuse.data.mosi import load_mosi_folder
from gpfuse.data.synthetic import write_synthetic_mosi


def test_real_mosi_standard_folds(mosi_root, caplog):
    with caplog.at_level(logging.WARNING):
        splits = load_mosi_folder(mosi_root)
    # standard folds 1284 / 229 / 686, less the 4 segments without a transcript (3 train, 1 test)
    assert {k: len(v) for k, v in splits.items()} == {"train": 1281, "valid": 229, "test": 685}
    assert "4 segment(s) without a transcript dropped" in caplog.text
    train = splits["train"]
    assert train.features["audio"].shape == (1281, 1, 73) and train.masks["audio"].all()
    assert train.ids[0] == "03bSnISJMiM_1" and train.texts[10] != ""
    assert train.labels.min() >= -3 and train.labels.max() <= 3
    audio_only = load_mosi_folder(mosi_root, ["audio"])
    assert {k: len(v) for k, v in audio_only.items()} == {"train": 1284, "valid": 229, "test": 686}
    # no video appears in two folds
    videos = {s: {i.rsplit("_", 1)[0] for i in v.ids} for s, v in audio_only.items()}
    assert not (videos["train"] & videos["test"]) and not (videos["train"] & videos["valid"])


def test_synthetic_layout_round_trips_through_npz(tmp_path):
    root = write_synthetic_mosi(tmp_path / "mosi", n_videos=10, segments_per_video=4)
    splits = load_mosi_folder(root)
    assert sum(len(s) for s in splits.values()) == 40
    save_features_npz(splits, tmp_path / "f.npz")
    back = load_features_npz(tmp_path / "f.npz")
    np.testing.assert_array_equal(back["test"].features["audio"], splits["test"].features["audio"])
    np.testing.assert_array_equal(back["train"].texts, splits["train"].texts)


def _rewrite(path, transform):
    rows = list(csv.DictReader(path.open()))
    fields = list(rows[0])
    rows, fields = transform(rows, fields)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fields)
        w.writeheader()
        w.writerows(rows)


def test_bad_files_are_named(tmp_path, caplog):
    root = write_synthetic_mosi(tmp_path / "mosi", n_videos=5, segments_per_video=3)
    with pytest.raises(FileNotFoundError, match="labels.csv"):
        load_mosi_folder(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="vision"):
        load_mosi_folder(root, ["text", "vision"])

    def drop_text(rows, fields):
        rows[0]["text"] = ""
        return rows, fields

    _rewrite(root / "transcripts.csv", drop_text)
    with caplog.at_level(logging.WARNING):
        splits = load_mosi_folder(root)
    assert sum(len(s) for s in splits.values()) == 14 and "vid0000synth_1" in caplog.text

    (root / "audio_declare_lab.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="audio_declare_lab.npz: not a readable"):
        load_mosi_folder(root)

    def bad_label(rows, fields):
        rows[2]["sentiment"] = "very good"
        return rows, fields

    _rewrite(root / "labels.csv", bad_label)
    with pytest.raises(ValueError, match=r"labels.csv, row 4: bad sentiment value 'very good'"):
        load_mosi_folder(root, ["audio"])

    def no_split(rows, fields):
        return [{k: v for k, v in r.items() if k != "standard_split"} for r in rows], fields[:-1]

    _rewrite(root / "labels.csv", no_split)
    with pytest.raises(ValueError, match=r"missing column\(s\) \['standard_split'\]"):
        load_mosi_folder(root, ["audio"])


def test_nan_audio_is_replaced_and_counted(tmp_path, caplog):
    root = write_synthetic_mosi(tmp_path / "mosi", n_videos=5, segments_per_video=3)
    with np.load(root / "audio_declare_lab.npz") as d:
        arrays = dict(d)
    arrays["features"][0, :3] = np.nan
    arrays["features"][1, 0] = np.inf
    np.savez(root / "audio_declare_lab.npz", **arrays)
    with caplog.at_level(logging.WARNING):
        splits = load_mosi_folder(root, ["audio"])
    assert "replaced 4 non-finite values" in caplog.text
    assert all(np.isfinite(s.features["audio"]).all() for s in splits.values())


def test_split_features_validates_shapes():
    with pytest.raises(ValueError, match="mask of 'audio' must have shape"):
        SplitFeatures(np.array(["a"]), np.zeros(1), {"audio": np.zeros((1, 2, 3))}, {"audio": np.ones((1, 3), bool)})
    with pytest.raises(ValueError, match="labels has 2 rows but ids has 1"):
        SplitFeatures(np.array(["a"]), np.zeros(2))
