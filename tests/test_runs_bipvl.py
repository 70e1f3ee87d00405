"""BiPVL-Seg runs end to end on a generated Decathlon folder: train (alignment losses, uncertainty weights
logged), per-class Dice / HD95 / NSD, eval, predict (NIfTI with the input's affine + mid-slice PNG), the
vision-only ablation, and bad descriptions through a run."""
from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest

from gpfuse.config import validate_config
from gpfuse.data.synthetic_volumes import write_synthetic_decathlon
from gpfuse.tasks.runner import evaluate, predict, run_dir_for, train


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_synthetic_decathlon(tmp_path_factory.mktemp("vol") / "dec", n_cases=6, shape=(32, 64, 32),
                                     num_classes=3)


def _config(tmp_path, root, **model):
    return validate_config({
        "name": "tiny_bipvl", "output_dir": str(tmp_path / "runs"),
        "data": {"source": "decathlon", "root": str(root), "descriptions": str(root / "descriptions.csv"),
                 "val_cases": 1, "test_cases": 1, "roi_size": [32, 64, 32], "samples_per_volume": 1,
                 "crop_foreground": False, "sw_batch_size": 1},
        "model": {"name": "bipvl_seg", "feature_size": 12, "fusion_heads": 4, "fusion_mlp": 32, "max_text_len": 16,
                  **model},
        "train": {"max_epochs": 1, "lr": 1e-3, "warmup_epochs": 0, "accelerator": "cpu",
                  "monitor": "valid/mean_dice", "monitor_mode": "max"},
    }, "test")


@pytest.mark.slow
def test_full_model_run_evaluates_and_predicts(tmp_path, root):
    cfg = _config(tmp_path, root)
    metrics = train(cfg)
    for key in ("mean_dice", "mean_hd95", "mean_nsd", "dice/smooth_organ", "hd95/striped_organ", "nsd/striped_organ"):
        assert key in metrics["test"] and np.isfinite(metrics["test"][key])
    run = run_dir_for(cfg)
    header = (run / "logs" / "attempt_0" / "metrics.csv").read_text().splitlines()[0]
    assert "train/align" in header and "weight/seg" in header and "train/class" in header
    assert json.loads((run / "data_stats.json").read_text())["cases"] == {"train": 4, "valid": 1, "test": 1}
    assert (run / "prediction_slices.png").is_file()
    again = evaluate(run)
    assert again["test"]["mean_dice"] == pytest.approx(metrics["test"]["mean_dice"], abs=1e-6)
    out = predict(run, root / "imagesTr" / "case_003.nii.gz", tmp_path / "pred")
    seg, source = nib.load(out / "case_003_seg.nii.gz"), nib.load(root / "imagesTr" / "case_003.nii.gz")
    assert seg.shape == source.shape and np.allclose(seg.affine, source.affine)
    assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2} and (out / "case_003_slices.png").is_file()


@pytest.mark.slow
def test_vision_only_ablation_runs_without_text(tmp_path, root):
    metrics = train(_config(tmp_path, root, text=False, alignment=False))
    assert metrics["parameters"]["total"] < 5_000_000 and "mean_nsd" in metrics["test"]


def test_descriptions_without_a_class_are_named(tmp_path, root):
    with (root / "descriptions.csv").open(newline="") as f:
        rows = list(csv.reader(f))
    bad = tmp_path / "desc.csv"
    with bad.open("w", newline="") as f:
        csv.writer(f).writerows(rows[:-1])  # the last class has no row
    cfg = _config(tmp_path, root)
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"descriptions": str(bad)})})
    with pytest.raises(ValueError, match=r"desc.csv: no description for class 2"):
        train(cfg)
