"""BiPVL-Seg runs end to end on a generated Decathlon folder: train (alignment losses, uncertainty weights
logged), per-class Dice / HD95 / NSD, eval, predict (NIfTI with the input's affine + mid-slice PNG), the
vision-only ablation, and bad descriptions through a run."""

from __future__ import annotations

import csv
import json
from types import SimpleNamespace

import lightning as L
import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import tiny_bipvl
from gpfuse.config import validate_config
from gpfuse.data.synthetic_volumes import write_synthetic_decathlon
from gpfuse.tasks.kinds import TASK_KINDS
from gpfuse.tasks.runner import evaluate, predict, run_dir_for, train


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_synthetic_decathlon(
        tmp_path_factory.mktemp("vol") / "dec", n_cases=6, shape=(32, 64, 32), num_classes=3
    )


def _config(tmp_path, root, **model):
    return validate_config(tiny_bipvl(root, tmp_path / "runs", **model), "test")


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
    assert again["valid"] == pytest.approx(metrics["valid"], abs=1e-5)  # the fit's best-epoch figures
    out = predict(run, root / "imagesTr" / "case_003.nii.gz", tmp_path / "pred")
    seg, source = nib.load(out / "case_003_seg.nii.gz"), nib.load(root / "imagesTr" / "case_003.nii.gz")
    assert seg.shape == source.shape and np.allclose(seg.affine, source.affine)
    labels = set(np.unique(np.asarray(seg.dataobj)).tolist())
    assert labels <= {0, 1, 2} and len(labels) > 1  # not one class everywhere
    assert (out / "case_003_slices.png").is_file()


@pytest.mark.slow
def test_vision_only_ablation_runs_without_text_in_bf16(tmp_path):
    # 2 training cases: bf16 is emulated (slow) on CPUs without AVX512-BF16
    small = write_synthetic_decathlon(tmp_path / "dec", n_cases=4, shape=(32, 64, 32), num_classes=3)
    cfg = _config(tmp_path, small, text=False, alignment=False)
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"precision": "bf16-mixed"})})
    metrics = train(cfg)  # evaluation too: metrics and the inverse resampling leave the autocast region
    assert metrics["parameters"]["total"] < 5_000_000 and np.isfinite(metrics["test"]["mean_nsd"])


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


class _Everywhere(torch.nn.Module):
    """A stand-in model that gives class ``cls`` everywhere (BiPVL's output, without alignment outputs)."""

    def __init__(self, num_classes: int, cls: int) -> None:
        super().__init__()
        self.num_classes, self.cls = num_classes, cls
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, batch):
        x = batch["image"]
        logits = torch.zeros(len(x), self.num_classes, *x.shape[2:])
        logits[:, self.cls] = 10.0 * self.scale
        return SimpleNamespace(logits=logits)


def test_3d_metrics_are_scored_on_the_label_files_grid(tmp_path):
    """An anisotropic volume (1 x 1 x 4 mm) resampled to 1 mm for the model: the Dice reported is the one on
    the label file's grid, which differs from the Dice on the resampled grid that was reported before."""
    from monai.transforms import LoadImage, Spacing

    root = write_synthetic_decathlon(
        tmp_path / "aniso", n_cases=4, shape=(16, 16, 7), num_classes=3, spacing=(1.0, 1.0, 4.0)
    )
    cfg = validate_config(
        {
            "name": "grid",
            "output_dir": str(tmp_path / "runs"),
            "data": {
                "source": "decathlon",
                "root": str(root),
                "descriptions": str(root / "descriptions.csv"),
                "val_cases": 1,
                "test_cases": 1,
                "roi_size": [16, 16, 32],
                "pixdim": [1.0, 1.0, 1.0],
                "crop_foreground": False,
                "sw_batch_size": 1,
                "cache_rate": 0.0,
            },
            "model": {"name": "bipvl_seg"},
            "train": {"accelerator": "cpu"},
        },
        "test",
    )
    kind = TASK_KINDS["segmentation3d"]
    data = kind.data(cfg, None, None)
    data.setup()
    task = kind.task(cfg, _Everywhere(3, cls=1), data)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    logged = trainer.test(task, dataloaders=data.test_dataloader(), verbose=False)[0]

    label = np.asarray(nib.load(data.cases["test"][0].label).dataobj)
    organ = (label == 1).sum()
    on_file_grid = 2 * organ / (organ + label.size)  # the prediction is class 1 in every voxel
    resampled = Spacing(pixdim=(1.0, 1.0, 1.0), mode="nearest")(
        LoadImage(ensure_channel_first=True)(data.cases["test"][0].label)
    )[0].numpy()
    on_resampled_grid = 2 * (resampled == 1).sum() / ((resampled == 1).sum() + resampled.size)
    assert abs(on_file_grid - on_resampled_grid) > 1e-3  # the two grids give different answers ...
    name = "smooth_organ"
    assert logged[f"test/dice/{name}"] == pytest.approx(on_file_grid, abs=1e-6)  # ... and the file's is reported
    assert logged["test/dice/striped_organ"] == 0.0


def test_a_test_split_that_is_the_validation_split_must_be_asked_for(tmp_path, root):
    from gpfuse.config import ConfigError

    raw = {
        "name": "x",
        "output_dir": str(tmp_path),
        "model": {"name": "bipvl_seg"},
        "data": {
            "source": "decathlon",
            "root": str(root),
            "descriptions": "msd_hippocampus",
            "val_cases": 2,
            "test_cases": 0,
        },
    }
    with pytest.raises(ConfigError, match=r"data: .*test_cases is 0.*test_is_validation: true"):
        validate_config(raw, "test")
    with pytest.raises(ConfigError, match="needs test_cases: 0"):
        validate_config({**raw, "data": {**raw["data"], "test_cases": 1, "test_is_validation": True}}, "test")
    cfg = validate_config(
        {**raw, "data": {**raw["data"], "descriptions": str(root / "descriptions.csv"), "test_is_validation": True}},
        "test",
    )
    data = TASK_KINDS["segmentation3d"].data(cfg, None, None)
    data.setup()
    assert data.cases["test"] == data.cases["valid"] and len(data.cases["valid"]) == 2
