"""Bad inputs as a user meets them, through the `gpfuse` command: every one ends in one `error:` line that names
the file, key or value, exit code 2, no traceback, and nothing lost (metrics.json, sources and checkpoints are
left as they were). Each row: (kind, what is wrong, how to make it, the words the error must hold)."""

from __future__ import annotations

import csv
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import run_gpfuse
from gpfuse.config import validate_config
from gpfuse.data.features import load_features_npz, save_features_npz
from gpfuse.data.synthetic import write_synthetic_mosi
from gpfuse.data.synthetic_pickles import write_mult_pickle
from gpfuse.data.synthetic_polyp import write_synthetic_polyp_folder
from gpfuse.data.synthetic_reid import write_synthetic_colo_pair
from gpfuse.data.synthetic_volumes import write_synthetic_decathlon
from gpfuse.tasks.runner import run_dir_for, train

GRF = {"name": "grf", "order": ["text", "audio"], "d_model": 16, "num_heads": 2, "num_layers": 1, "ffn_dim": 32}


@pytest.fixture(scope="module")
def space(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bad")


@pytest.fixture(scope="module")
def mosi(space) -> Path:
    return write_synthetic_mosi(space / "mosi", n_videos=6, segments_per_video=3)


def _grf_raw(space: Path, root: Path, **data) -> dict:
    return {
        "name": "tiny",
        "output_dir": str(space / "runs"),
        "data": {"source": "mosi", "root": str(root), "batch_size": 8, "max_len": {"text": 12, "audio": 1}, **data},
        "model": GRF,
        "train": {"max_epochs": 1, "warmup_epochs": 0, "accelerator": "cpu"},
    }


def _yaml(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def run(space, mosi) -> Path:
    """A finished tiny GRF run."""
    cfg = validate_config(_grf_raw(space, mosi), "test")
    train(cfg)
    return run_dir_for(cfg)


def _copy_run(run: Path, space: Path, name: str) -> Path:
    target = space / "copies" / name
    shutil.copytree(run, target)
    return target


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


# ---- the rows ------------------------------------------------------------------------------------------
# each maker gets (space, mosi, run) and returns the command's arguments


def config_not_utf8(space, mosi, run):
    return ["train", _write_bytes(space / "latin1.yaml", "name: café\n".encode("latin-1"))]


def _write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def config_not_yaml(space, mosi, run):
    return ["train", _write_bytes(space / "broken.yaml", b"name: [unclosed\n")]


def config_a_list(space, mosi, run):
    return ["train", _write_bytes(space / "list.yaml", b"- a\n- b\n")]


def config_missing(space, mosi, run):
    return ["train", space / "nowhere.yaml"]


def config_unknown_key(space, mosi, run):
    raw = _grf_raw(space, mosi)
    raw["train"]["epochz"] = 3
    return ["train", _yaml(space / "unknown.yaml", raw)]


def config_wrong_type(space, mosi, run):
    return ["train", _yaml(space / "ok.yaml", _grf_raw(space, mosi)), "--set", "train.lr=fast"]


def config_unknown_model(space, mosi, run):
    raw = _grf_raw(space, mosi)
    raw["model"] = {"name": "gpt5"}
    return ["train", _yaml(space / "model.yaml", raw)]


def override_not_yaml(space, mosi, run):
    return ["train", _yaml(space / "ok.yaml", _grf_raw(space, mosi)), "--set", "train.lr=[1"]


def override_under_a_scalar(space, mosi, run):
    return ["train", _yaml(space / "ok.yaml", _grf_raw(space, mosi)), "--set", "train=5", "--set", "train.lr=1"]


def override_without_equals(space, mosi, run):
    return ["train", _yaml(space / "ok.yaml", _grf_raw(space, mosi)), "--set", "train.lr"]


def test_split_is_the_validation_split(space, mosi, run):
    root = write_synthetic_decathlon(space / "dec0", n_cases=4, shape=(16, 16, 16))
    raw = {
        "name": "v",
        "data": {
            "source": "decathlon",
            "root": str(root),
            "descriptions": str(root / "descriptions.csv"),
            "val_cases": 1,
            "test_cases": 0,
        },
        "model": {"name": "bipvl_seg"},
    }
    return ["train", _yaml(space / "testval.yaml", raw)]


def output_dir_under_a_file(space, mosi, run):
    (space / "afile").write_text("x")
    return ["train", _yaml(space / "ok.yaml", _grf_raw(space, mosi)), "--set", f"output_dir={space / 'afile' / 'runs'}"]


def output_dir_in_sys(space, mosi, run):
    return ["train", _yaml(space / "ok.yaml", _grf_raw(space, mosi)), "--set", "output_dir=/sys/gpfuse_runs"]


def predict_out_is_a_folder(space, mosi, run):
    (space / "outdir").mkdir(exist_ok=True)
    return ["predict", run, mosi, "--out", space / "outdir"]


def predict_on_nothing(space, mosi, run):
    return ["predict", run, space / "nonexistent", "--out", space / "p.csv"]


def convert_onto_itself(space, mosi, run):
    src = write_mult_pickle(space / "self.pkl", n_per_split=(4, 2, 2))
    return ["convert", src, src]


def eval_not_a_run(space, mosi, run):
    (space / "empty_folder").mkdir(exist_ok=True)
    return ["eval", space / "empty_folder"]


def eval_truncated_weights(space, mosi, run):
    copy = _copy_run(run, space, "truncated_weights")
    _truncate(copy / "model" / "model.safetensors")
    return ["eval", copy]


def eval_weights_of_another_model(space, mosi, run):
    copy = _copy_run(run, space, "other_model")
    config = json.loads((copy / "model" / "config.json").read_text())
    config["options"]["d_model"] = 32
    (copy / "model" / "config.json").write_text(json.dumps(config))
    return ["eval", copy]


def eval_corrupt_metrics(space, mosi, run):
    copy = _copy_run(run, space, "corrupt_metrics")
    (copy / "metrics.json").write_text('{"valid": ')
    return ["eval", copy]


def eval_corrupt_saved_config(space, mosi, run):
    copy = _copy_run(run, space, "corrupt_config")
    (copy / "config.yaml").write_bytes(b"\xff\xfe not yaml")
    return ["eval", copy]


def eval_forbidden_override(space, mosi, run):
    return ["eval", run, "--set", "train.lr=0.1"]


def eval_after_the_data_moved(space, mosi, run):
    copy = _copy_run(run, space, "data_moved")
    saved = yaml.safe_load((copy / "config.yaml").read_text())
    saved["data"]["root"] = str(space / "moved_away")
    saved["data"]["synthetic_if_missing"] = True  # as a run from an old demo config says
    (copy / "config.yaml").write_text(yaml.safe_dump(saved))
    return ["eval", copy]


def summary_over_corrupt_metrics(space, mosi, run):
    copy = _copy_run(run, space, "summary_corrupt")
    (copy / "metrics.json").write_bytes(b"\x00\x01")
    return ["summary", copy]


def resume_truncated_checkpoint(space, mosi, run):
    return _resume_with(space, mosi, run, "truncated", lambda p: _truncate(p, 0.3))


def resume_malicious_checkpoint(space, mosi, run):
    class Evil:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {space / 'PWNED'}",))

    return _resume_with(space, mosi, run, "malicious", lambda p: p.write_bytes(pickle.dumps({"state_dict": Evil()})))


def resume_other_model_checkpoint(space, mosi, run):
    def other(path: Path) -> None:
        ckpt = torch.load(path, weights_only=True)
        ckpt["state_dict"] = {"model.x.weight": torch.zeros(2, 2)}
        torch.save(ckpt, path)

    return _resume_with(space, mosi, run, "other", other)


def _resume_with(space: Path, mosi: Path, run: Path, name: str, damage) -> list:
    out = space / f"resume_{name}"
    shutil.copytree(run, out / "tiny" / "seed_1111")
    damage(out / "tiny" / "seed_1111" / "checkpoints" / "last.ckpt")
    raw = {**_grf_raw(space, mosi), "output_dir": str(out)}
    return ["train", _yaml(space / f"resume_{name}.yaml", raw), "--resume", "--set", "train.max_epochs=2"]


def labels_csv_nan(space, mosi, run):
    root = _mosi_copy(space, "nan_label")
    rows = list(csv.DictReader((root / "labels.csv").open()))
    rows[-1]["sentiment"] = "nan"  # a test segment
    with (root / "labels.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return ["train", _yaml(space / "nan_label.yaml", {**_grf_raw(space, root), "name": "nan_label"})]


def labels_csv_not_a_number(space, mosi, run):
    root = _mosi_copy(space, "bad_number")
    text = (root / "labels.csv").read_text().splitlines()
    head, first = text[0], text[1].split(",")
    first[head.split(",").index("sentiment")] = "positive"
    (root / "labels.csv").write_text("\n".join([head, ",".join(first), *text[2:]]) + "\n")
    return ["train", _yaml(space / "bad_number.yaml", {**_grf_raw(space, root), "name": "bad_number"})]


def transcripts_without_text_column(space, mosi, run):
    root = _mosi_copy(space, "no_text_column")
    (root / "transcripts.csv").write_text("segment_id,video_id,segment_index\n")
    return ["train", _yaml(space / "no_text_column.yaml", {**_grf_raw(space, root), "name": "no_text_column"})]


def audio_npz_truncated(space, mosi, run):
    root = _mosi_copy(space, "audio_truncated")
    _truncate(root / "audio_declare_lab.npz")
    return ["train", _yaml(space / "audio_truncated.yaml", {**_grf_raw(space, root), "name": "audio_truncated"})]


def _mosi_copy(space: Path, name: str) -> Path:
    return write_synthetic_mosi(space / name, n_videos=6, segments_per_video=3)


def _npz(space: Path, name: str, change) -> Path:
    """A clean feature npz (from a MulT-layout pickle), its arrays changed by ``change``."""
    clean = save_features_npz(_mult_splits(space), space / "clean.npz")
    with np.load(clean, allow_pickle=False) as data:
        arrays = dict(data)
    change(arrays)
    path = space / f"{name}.npz"
    with path.open("wb") as f:
        np.savez(f, **arrays)
    return path


def _mult_splits(space: Path):
    from gpfuse.data.sentiment_pickles import load_feature_pickle

    return load_feature_pickle(write_mult_pickle(space / "for_npz.pkl", n_per_split=(6, 3, 3)), "auto")


def _npz_raw(space: Path, path: Path) -> dict:
    return {
        "name": "n",
        "output_dir": str(space / "runs"),
        "data": {"source": "npz", "root": str(path), "modalities": ["text", "audio"], "max_len": {}},
        "model": {**GRF},
        "train": {"max_epochs": 1, "accelerator": "cpu"},
    }


def npz_nan_label(space, mosi, run):
    def change(a):
        a["train/labels"] = a["train/labels"].copy()
        a["train/labels"][1] = np.nan

    return ["train", _yaml(space / "npz_nan.yaml", _npz_raw(space, _npz(space, "nan_label", change)))]


def npz_object_array(space, mosi, run):
    def change(a):
        a["valid/labels"] = np.array([1.0, "x", None], dtype=object)

    return ["train", _yaml(space / "npz_object.yaml", _npz_raw(space, _npz(space, "object_array", change)))]


def npz_not_a_zip(space, mosi, run):
    path = _write_bytes(space / "notzip.npz", b"this is not an npz")
    return ["train", _yaml(space / "npz_notzip.yaml", _npz_raw(space, path))]


def pickle_malicious(space, mosi, run):
    bad = _write_bytes(space / "evil.pkl", b"cos\nsystem\n(S'echo pwned'\ntR.")
    return ["convert", bad, space / "evil.npz"]


def _polyp_raw(space: Path, folder: Path, **data) -> dict:
    return {
        "name": "p",
        "output_dir": str(space / "runs"),
        "data": {"source": "polyp_folders", "train": [str(folder)], "split": "random", "image_size": 32, **data},
        "model": {"name": "ea_dk", "encoder": "efficientnet_lite0", "encoder_weights": None, "channels": 16},
        "train": {"max_epochs": 1, "accelerator": "cpu", "monitor": "valid/Dice", "monitor_mode": "max"},
    }


def polyp_truncated_jpeg(space, mosi, run):
    folder = write_synthetic_polyp_folder(space / "trunc_jpeg", n_images=8, size=64, seed=3)
    _truncate(folder / "images" / "003.jpg", 0.6)
    return ["train", _yaml(space / "trunc_jpeg.yaml", _polyp_raw(space, folder))]


def polyp_mask_of_another_size(space, mosi, run):
    from PIL import Image

    folder = write_synthetic_polyp_folder(space / "mask_size", n_images=8, size=32, seed=4)
    Image.new("L", (20, 20)).save(folder / "masks" / "002.png")
    return ["train", _yaml(space / "mask_size.yaml", _polyp_raw(space, folder))]


def polyp_missing_mask(space, mosi, run):
    folder = write_synthetic_polyp_folder(space / "no_mask", n_images=8, size=32, seed=5)
    (folder / "masks" / "004.png").unlink()
    return ["train", _yaml(space / "no_mask.yaml", _polyp_raw(space, folder))]


def _volume_raw(space: Path, root: Path) -> dict:
    return {
        "name": "v",
        "output_dir": str(space / "runs"),
        "data": {
            "source": "decathlon",
            "root": str(root),
            "descriptions": str(root / "descriptions.csv"),
            "val_cases": 1,
            "test_cases": 1,
            "roi_size": [32, 32, 32],
        },
        "model": {"name": "bipvl_seg", "feature_size": 12},
        "train": {"max_epochs": 1, "accelerator": "cpu"},
    }


def nifti_truncated(space, mosi, run):
    root = write_synthetic_decathlon(space / "dec_trunc", n_cases=4, shape=(32, 32, 32))
    _truncate(root / "imagesTr" / "case_002.nii.gz", 0.5)
    return ["train", _yaml(space / "nifti_trunc.yaml", _volume_raw(space, root))]


def nifti_not_gzip(space, mosi, run):
    root = write_synthetic_decathlon(space / "dec_notgz", n_cases=4, shape=(32, 32, 32))
    (root / "labelsTr" / "case_003.nii.gz").write_bytes(b"plain text, not gzip")
    return ["train", _yaml(space / "nifti_notgz.yaml", _volume_raw(space, root))]


def dataset_json_corrupt(space, mosi, run):
    root = write_synthetic_decathlon(space / "dec_json", n_cases=4, shape=(16, 16, 16))
    (root / "dataset.json").write_text('{"labels": ')
    return ["train", _yaml(space / "dec_json.yaml", _volume_raw(space, root))]


def reid_truncated_image(space, mosi, run):
    root = write_synthetic_colo_pair(space / "colo_trunc", n_videos=6, frames_per_view=2, size=48)
    image = sorted((root / "resized_frame").rglob("*.jpg"))[3]
    _truncate(image, 0.5)
    raw = {
        "name": "r",
        "output_dir": str(space / "runs"),
        "data": {"source": "colo_pair", "root": str(root), "image_size": [48, 48], "batch_size": 4, "num_instances": 2},
        "model": {"name": "gpf_net", "image_encoder": "efficientnet_lite0", "image_weights": None, "dim": 32},
        "train": {"max_epochs": 1, "accelerator": "cpu", "monitor": "valid/mAP", "monitor_mode": "max"},
    }
    return ["train", _yaml(space / "reid_trunc.yaml", raw)], image


ROWS = [
    ("config", "not UTF-8", config_not_utf8, ["latin1.yaml", "not UTF-8"]),
    ("config", "not YAML", config_not_yaml, ["broken.yaml", "not valid YAML"]),
    ("config", "a list, not a mapping", config_a_list, ["list.yaml", "must be a mapping"]),
    ("config", "missing file", config_missing, ["config file not found", "nowhere.yaml"]),
    ("config", "unknown key", config_unknown_key, ["unknown.yaml", "train.epochz"]),
    ("config", "wrong type", config_wrong_type, ["train.lr", "fast"]),
    ("config", "unknown model", config_unknown_model, ["model.name must be one of", "gpt5"]),
    ("config", "--set value not YAML", override_not_yaml, ["train.lr=[1", "not valid YAML"]),
    ("config", "--set under a scalar", override_under_a_scalar, ["train.lr=1", "train is 5, not a mapping"]),
    ("config", "--set without =", override_without_equals, ["train.lr", "key.path=value"]),
    ("config", "test split = validation split", test_split_is_the_validation_split, ["test_is_validation"]),
    ("output", "output_dir under a file", output_dir_under_a_file, ["cannot be written", "afile"]),
    ("output", "output_dir in /sys", output_dir_in_sys, ["cannot be written", "/sys/gpfuse_runs"]),
    ("output", "predict --out is a folder", predict_out_is_a_folder, ["outdir", "is a folder"]),
    ("output", "predict on a missing path", predict_on_nothing, ["nonexistent", "does not exist"]),
    ("output", "convert onto its source", convert_onto_itself, ["self.pkl", "would replace"]),
    ("run folder", "not a run", eval_not_a_run, ["empty_folder", "not a gpfuse run folder"]),
    ("saved model", "truncated model.safetensors", eval_truncated_weights, ["model.safetensors", "not a readable"]),
    ("saved model", "weights of another model", eval_weights_of_another_model, ["model.safetensors", "does not fit"]),
    ("run folder", "corrupt metrics.json", eval_corrupt_metrics, ["metrics.json", "not valid JSON"]),
    ("run folder", "saved config not UTF-8", eval_corrupt_saved_config, ["config.yaml"]),
    ("run folder", "eval --set of a training key", eval_forbidden_override, ["train.lr", "may change only"]),
    ("run folder", "data moved, old synthetic flag", eval_after_the_data_moved, ["moved_away", "not found"]),
    ("run folder", "summary over corrupt metrics.json", summary_over_corrupt_metrics, ["metrics.json", "JSON"]),
    ("checkpoint", "truncated last.ckpt", resume_truncated_checkpoint, ["last.ckpt", "not a readable checkpoint"]),
    ("checkpoint", "malicious last.ckpt", resume_malicious_checkpoint, ["last.ckpt", "not a readable checkpoint"]),
    ("checkpoint", "another model's last.ckpt", resume_other_model_checkpoint, ["last.ckpt", "another model's"]),
    ("labels", "NaN label in labels.csv", labels_csv_nan, ["labels.csv", "NaN", "never replaced"]),
    ("labels", "label not a number", labels_csv_not_a_number, ["labels.csv", "'positive'"]),
    ("transcripts", "transcripts.csv without text", transcripts_without_text_column, ["transcripts.csv", "text"]),
    ("features", "truncated audio .npz", audio_npz_truncated, ["audio_declare_lab.npz", "not a readable"]),
    ("features", "NaN label in an .npz", npz_nan_label, ["nan_label.npz", "train/labels", "NaN"]),
    ("features", "object array in an .npz", npz_object_array, ["object_array.npz", "valid/labels", "pickle"]),
    ("features", ".npz that is not a zip", npz_not_a_zip, ["notzip.npz", "not a readable"]),
    ("pickle", "malicious pickle", pickle_malicious, ["evil.pkl", "os.system"]),
    ("images", "truncated JPEG", polyp_truncated_jpeg, ["003.jpg"]),
    ("masks", "mask of another size", polyp_mask_of_another_size, ["002.png", "differs"]),
    ("masks", "image without a mask", polyp_missing_mask, ["004.jpg", "without a mask"]),
    ("volumes", "truncated .nii.gz", nifti_truncated, ["case_002.nii.gz", "unreadable NIfTI"]),
    ("volumes", "label file not gzip", nifti_not_gzip, ["case_003.nii.gz", "unreadable NIfTI"]),
    ("volumes", "corrupt dataset.json", dataset_json_corrupt, ["dataset.json"]),
]


@pytest.mark.parametrize("kind,what,make,words", ROWS, ids=[f"{k}: {w}" for k, w, _, _ in ROWS])
def test_bad_input_is_named(kind, what, make, words, space, mosi, run):
    metrics_before = (run / "metrics.json").read_bytes()
    code, output = run_gpfuse(*map(str, make(space, mosi, run)))
    line = " ".join(output.split())
    assert code == 2, output
    assert "error:" in line and "Traceback" not in output, output
    for word in words:
        assert word in line, (word, output)
    assert (run / "metrics.json").read_bytes() == metrics_before  # nothing of the finished run changed
    assert not (space / "PWNED").exists()  # no code from a checkpoint or pickle ran


def test_reid_truncated_image_is_named_and_skippable(space, mosi, run):
    args, image = reid_truncated_image(space, mosi, run)
    code, output = run_gpfuse(*map(str, args))
    assert code == 2 and image.name in " ".join(output.split()) and "Traceback" not in output


def test_skip_drops_a_truncated_jpeg_and_nifti(space, tmp_path):
    from gpfuse.data.decathlon import check_cases, read_decathlon
    from gpfuse.data.polyp import check_items, list_folder

    folder = write_synthetic_polyp_folder(tmp_path / "jpeg", n_images=6, size=64, seed=7)
    _truncate(folder / "images" / "002.jpg", 0.6)
    kept, counts = check_items(list_folder(folder), on_bad_file="skip")
    assert len(kept) == 5 and counts["skipped"] == 1 and "002" not in [it.name for it in kept]
    root = write_synthetic_decathlon(tmp_path / "dec", n_cases=4, shape=(16, 16, 16))
    _truncate(root / "labelsTr" / "case_001.nii.gz", 0.5)
    cases, labels = read_decathlon(root)
    kept, skipped = check_cases(cases, len(labels), on_bad_file="skip")
    assert skipped == 1 and len(kept) == 3


def test_decoding_is_remembered_and_redone_for_a_changed_file(tmp_path, monkeypatch):
    from gpfuse.data.decoded_files import DecodedFiles
    from gpfuse.data.images import check_image

    folder = write_synthetic_polyp_folder(tmp_path / "p", n_images=2, size=32)
    image = folder / "images" / "001.jpg"
    with DecodedFiles(tmp_path / "record.json") as known:
        assert check_image(image, known) is None
    with DecodedFiles(tmp_path / "record.json") as known:
        assert known.contains(image)
    _truncate(image, 0.5)  # changed size: decoded again, and found broken
    with DecodedFiles(tmp_path / "record.json") as known:
        assert not known.contains(image) and check_image(image, known) is not None


def test_npz_features_nan_are_replaced_and_counted(space, caplog):
    path = _npz(space, "nan_features", lambda a: a["train/features/audio"].__setitem__((0, 0, slice(0, 3)), np.nan))
    splits = load_features_npz(path)
    assert np.isfinite(splits["train"].features["audio"]).all()
    assert "nan_features.npz:train/features/audio: replaced 3 non-finite values" in caplog.text


def test_set_replaces_a_mapping(space, mosi):
    from gpfuse.config import load_config

    folder = write_synthetic_polyp_folder(space / "replace", n_images=6, size=32)
    raw = _polyp_raw(space, folder, split="given", test={"a": str(folder), "b": str(folder)})
    path = _yaml(space / "replace.yaml", raw)
    assert list(load_config(path, ["data.test={b: " + str(folder) + "}"]).data.test) == ["b"]
    assert load_config(path, ["data.test={}"]).data.test == {}


def test_generated_data_only_where_a_command_asks_and_always_labelled(space, mosi, run, tmp_path):
    """A run's saved config cannot bring generated data back: evaluating a run whose data moved fails and
    leaves its metrics.json; the demo generates data only for absent datasets, names the run _SYNTHETIC, and
    every metrics.json computed on generated data says so."""
    from gpfuse.config import load_config
    from gpfuse.tasks.demo_data import with_demo_data

    copy = _copy_run(run, space, "moved_again")
    saved = yaml.safe_load((copy / "config.yaml").read_text())
    saved["data"].update(root=str(tmp_path / "gone"), synthetic_if_missing=True)
    (copy / "config.yaml").write_text(yaml.safe_dump(saved))
    before = (copy / "metrics.json").read_bytes()
    code, output = run_gpfuse("eval", copy)
    assert code == 2 and "CMU-MOSI not found" in output and (copy / "metrics.json").read_bytes() == before
    assert json.loads(before)["synthetic_data"] == [str(mosi)]  # the run itself was on generated data, and says so

    raw = _grf_raw(tmp_path, tmp_path / "absent_mosi")
    cfg = with_demo_data(load_config(_yaml(tmp_path / "demo.yaml", raw)), tmp_path / "demo_data")
    assert cfg.name == "tiny_SYNTHETIC" and cfg.data.root == str(tmp_path / "demo_data" / "mosi")
    present = with_demo_data(load_config(_yaml(tmp_path / "real.yaml", _grf_raw(tmp_path, mosi))), tmp_path / "x")
    assert present.data.root == str(mosi) and not (tmp_path / "x").exists()


def test_debug_shows_the_traceback(space):
    (space / "not_a_run").mkdir(exist_ok=True)
    with pytest.raises(FileNotFoundError, match="not a gpfuse run folder"):
        run_gpfuse("--debug", "eval", space / "not_a_run")


def test_a_loss_that_is_no_longer_a_number_stops_the_run():
    import lightning as L

    from gpfuse.tasks.finite_loss import FiniteLoss, NonFiniteLossError

    class Diverges(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

        def training_step(self, batch, batch_idx):
            return self.w.sum() * (float("nan") if batch_idx == 2 else 1.0)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        callbacks=[FiniteLoss()],
    )
    with pytest.raises(NonFiniteLossError, match="the training loss is nan at epoch 0, batch 2"):
        trainer.fit(Diverges(), train_dataloaders=torch.utils.data.DataLoader(torch.zeros(5, 1), batch_size=1))
