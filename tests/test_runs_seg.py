"""EA-DK runs end to end on generated polyp folders: train with a grouped split, both metric conventions per
test set, eval, predict (masks + overlays), resume, config errors."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from gpfuse.config import ConfigError, validate_config
from gpfuse.data.synthetic_polyp import write_synthetic_polyp_folder
from gpfuse.metrics.seg2d import PAPER_METRICS, TOOLBOX_METRICS
from gpfuse.models import create_model
from gpfuse.tasks.runner import evaluate, predict, run_dir_for, train


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("polyp")
    return (
        write_synthetic_polyp_folder(root / "train", n_images=20, size=40, per_sequence=4, seed=0),
        write_synthetic_polyp_folder(root / "other", n_images=6, size=48, seed=1),
    )


def _config(tmp_path, train_folder, train=None, model=None, **data):
    return validate_config(
        {
            "name": "tiny_ea_dk",
            "output_dir": str(tmp_path / "runs"),
            "data": {
                "source": "polyp_folders",
                "train": [str(train_folder)],
                "image_size": 32,
                "batch_size": 4,
                "eval_batch_size": 4,
                **data,
            },
            "model": {
                "name": "ea_dk",
                "encoder": "efficientnet_lite0",
                "encoder_weights": None,
                "channels": 16,
                **(model or {}),
            },
            "train": {
                "max_epochs": 2,
                "accelerator": "cpu",
                "optimizer": "sgd",
                "lr": 0.01,
                "schedule": "poly",
                "monitor": "valid/Dice",
                "monitor_mode": "max",
                **(train or {}),
            },
        },
        "test",
    )


@pytest.mark.slow
def test_grouped_split_run_evaluates_predicts_and_resumes(tmp_path, folders):
    train_folder, other = folders
    single = write_synthetic_polyp_folder(tmp_path / "single", n_images=1, size=48, seed=2)
    cfg = _config(
        tmp_path,
        train_folder,
        split="group",
        test_fraction=0.25,
        val_fraction=0.34,
        test={"other": str(other), "single": str(single)},  # a test set of one image keeps its sample axis
        train={"optimizer": "adamw", "lr": 1e-3, "max_epochs": 4},  # ImageNet weights: masks differ image to image
        model={"encoder_weights": "imagenet"},
    )
    metrics = train(cfg)
    for name in ("other", "held_out", "single"):
        for key in (*PAPER_METRICS, *TOOLBOX_METRICS):
            assert f"{name}/{key}" in metrics["test"]
    assert set(metrics["valid"]) == {*PAPER_METRICS, *TOOLBOX_METRICS}
    run = run_dir_for(cfg)
    for name in ("held_out", "single"):  # the means of the per-image records written beside them
        with (run / "samples" / f"{name}.csv").open() as f:
            dice = [float(r["Dice"]) for r in csv.DictReader(f)]
        assert np.mean(dice) == pytest.approx(metrics["test"][f"{name}/Dice"], abs=1e-6)
    groups = {
        name: {line.split("\t")[2] for line in (run / "splits" / f"{name}.txt").read_text().splitlines()[1:]}
        for name in ("train", "valid", "test_held_out")
    }
    assert groups["train"].isdisjoint(groups["valid"]) and groups["train"].isdisjoint(groups["test_held_out"])
    assert (run / "predictions_other.png").is_file() and (run / "model" / "model.safetensors").is_file()
    assert json.loads((run / "data_stats.json").read_text())["images"]["test_other"] == 6
    again = evaluate(run)
    assert again["test"]["other/mDice"] == pytest.approx(metrics["test"]["other/mDice"], abs=1e-6)
    older = shutil.copytree(run, tmp_path / "older_run")  # a model saved before model.decoder_stride existed
    saved = json.loads((older / "model" / "config.json").read_text())
    del saved["options"]["decoder_stride"]
    (older / "model" / "config.json").write_text(json.dumps(saved))
    assert evaluate(older)["test"] == pytest.approx(again["test"], abs=1e-6)
    assert again["valid"] == pytest.approx(metrics["valid"], abs=1e-5)  # the fit's best-epoch figures
    out = predict(run, other / "images", tmp_path / "pred")
    assert sorted(p.name for p in (out / "masks").iterdir()) == [f"{i:03d}.png" for i in range(1, 7)]
    mask = np.asarray(Image.open(out / "masks" / "001.png"))
    assert mask.shape == (48, 48) and set(np.unique(mask)) <= {0, 255}  # the image's own size, 0/255
    assert (out / "overlays" / "001.png").is_file()
    rows = (out / "predictions.csv").read_text().splitlines()  # images/ given: the masks/ beside it are found
    assert rows[0] == "name,height,width,foreground_fraction,dice" and all(r.split(",")[4] for r in rows[1:])
    bare = shutil.copytree(other / "images", tmp_path / "bare")
    rows = (predict(run, bare, tmp_path / "pred_bare", save_probabilities=True) / "predictions.csv").read_text()
    assert rows.splitlines()[1].endswith(",")  # no masks anywhere: no Dice
    soft = np.asarray(Image.open(tmp_path / "pred_bare" / "probabilities" / "001.png"))
    assert soft.dtype == np.uint8 and soft.shape == (48, 48) and len(np.unique(soft)) > 2  # an 8-bit soft map
    with_masks = predict(run, other, tmp_path / "pred_masks")  # the data folder itself: Dice per image
    with (with_masks / "predictions.csv").open() as f:
        predicted = {r["name"]: float(r["dice"]) for r in csv.DictReader(f)}
    with (run / "samples" / "other.csv").open() as f:
        evaluated = {r["name"]: float(r["Dice"]) for r in csv.DictReader(f)}

    assert predicted.keys() == evaluated.keys() and len(set(evaluated.values())) > 2
    assert predicted == pytest.approx(evaluated, abs=1e-5)  # predict = eval, image by image
    resumed = train(cfg.model_copy(update={"train": cfg.train.model_copy(update={"max_epochs": 5})}), resume=True)
    assert resumed["epochs_run"] == 5


@pytest.mark.slow
def test_paper_random_split_and_bad_files_through_a_run(tmp_path, folders):
    train_folder = shutil.copytree(folders[0], tmp_path / "copy")
    (train_folder / "masks" / "004.png").unlink()  # an image without its mask
    cfg = _config(tmp_path, train_folder, split="random")
    with pytest.raises(ValueError, match=r"(?s)train: 1 unusable.*004.jpg: image without a mask"):
        train(cfg)
    cfg = _config(tmp_path, train_folder, split="random", on_bad_file="skip")
    metrics = train(cfg.model_copy(update={"name": "skipping"}))
    stats = json.loads((run_dir_for(cfg.model_copy(update={"name": "skipping"})) / "data_stats.json").read_text())
    assert stats["checks"]["train"]["skipped"] == 1
    # 80/20 of the 20 listed pairs, then the unusable one (drawn into train) left out where it landed
    assert stats["images"]["test_held_out"] == 4 and sum(stats["images"].values()) == 19
    assert "held_out/Dice" in metrics["test"]


def test_config_errors_name_the_key(tmp_path, folders):
    with pytest.raises(ConfigError, match="data.split"):
        _config(tmp_path, folders[0], split="sometimes")
    with pytest.raises(ConfigError, match="model.channel"):
        validate_config(
            {
                "name": "x",
                "data": {"source": "polyp_folders", "train": ["a"]},
                "model": {"name": "ea_dk", "channel": 32},
            },
            "test",
        )


@pytest.mark.slow
def test_channels_last_bf16_run_saves_reloads_and_evaluates_the_same(tmp_path, folders):
    from gpfuse.tasks.runner import _task

    train_folder, _ = folders
    cfg = _config(tmp_path, train_folder, split="random", test_fraction=0.25)
    cfg = cfg.model_copy(
        update={
            "train": cfg.train.model_copy(update={"max_epochs": 1, "precision": "bf16-mixed", "channels_last": True})
        }
    )
    task = _task(cfg, create_model("ea_dk", **cfg.model_options()), None)
    convs = [m.weight for m in task.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.shape[-1] > 1]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    metrics = train(cfg)
    again = evaluate(run_dir_for(cfg))  # the saved (contiguous) weights, laid out channels_last again
    for key, value in metrics["test"].items():
        assert again["test"][key] == pytest.approx(value, abs=1e-6), key
