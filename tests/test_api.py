"""The Python API: `gpfuse.load` on demo-size runs of the four task kinds gives the same outputs as `gpfuse
predict` (one path), at each input's own size or grid, with clear errors for bad input; a model folder predicts
on its own from anywhere; models save and load the Hugging Face way; every Python block of README.md runs."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import gpfuse
from conftest import colo_pair_data, polyp_folder_data, run_gpfuse, tiny_bipvl_model
from gpfuse.config import validate_config
from gpfuse.data.synthetic import write_synthetic_mosi
from gpfuse.data.synthetic_polyp import write_synthetic_polyp_folder
from gpfuse.data.synthetic_reid import write_synthetic_colo_pair
from gpfuse.data.synthetic_volumes import write_synthetic_decathlon
from gpfuse.metrics.reid import compute_distance_matrix
from gpfuse.tasks.runner import predict, run_dir_for, train

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
EFF = {"image_weights": None, "image_encoder": "efficientnet_lite0"}


def _train(raw: dict) -> Path:
    cfg = validate_config({"output_dir": "runs", **raw}, "test")
    train(cfg)
    return run_dir_for(cfg).resolve()


@pytest.fixture(scope="module")
def place(tmp_path_factory):
    """A working folder with data and the four README runs at runs/<name>/seed_<seed>, as cwd."""
    root = tmp_path_factory.mktemp("api")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        data = Path("data")
        polyps = write_synthetic_polyp_folder(data / "polyps", n_images=12, size=40)
        colo = write_synthetic_colo_pair(data / "colo", n_videos=8, frames_per_view=2, size=48)
        mosi = write_synthetic_mosi(data / "mosi", n_videos=8, segments_per_video=3)
        dec = write_synthetic_decathlon(data / "dec", n_cases=5, shape=(32, 64, 16), spacing=(1.0, 1.0, 2.0))
        runs = {
            "ea_dk": _train(
                {
                    "name": "ea_dk",
                    "data": polyp_folder_data(polyps),
                    "model": {
                        "name": "ea_dk",
                        "encoder": "efficientnet_lite0",
                        "encoder_weights": None,
                        "channels": 16,
                    },
                    "train": {"max_epochs": 1, "seed": 42, "monitor": "valid/Dice", "monitor_mode": "max"},
                }
            ),
            "gpf_net": _train(
                {
                    "name": "gpf_net",
                    "data": colo_pair_data(colo),
                    "model": {
                        "name": "gpf_net",
                        **EFF,
                        "dim": 32,
                        "num_fusion_layers": 1,
                        "fusion_heads": 4,
                        "fusion_ffn": 64,
                        "final_layers": 1,
                        "final_ffn": 64,
                        "max_text_len": 16,
                    },
                    "train": {"max_epochs": 1, "seed": 42, "monitor": "valid/mAP", "monitor_mode": "max"},
                }
            ),
            "grf": _train(
                {
                    "name": "grf",
                    "data": {"source": "mosi", "root": str(mosi), "batch_size": 8, "max_len": {"text": 16, "audio": 1}},
                    "model": {
                        "name": "grf",
                        "order": ["text", "audio"],
                        "d_model": 16,
                        "num_heads": 2,
                        "num_layers": 1,
                        "ffn_dim": 32,
                    },
                    "train": {"max_epochs": 1, "warmup_epochs": 0},
                }
            ),
            "bipvl_seg": _train(
                {
                    "name": "bipvl_seg",
                    "data": {
                        "source": "decathlon",
                        "root": str(dec),
                        "descriptions": str(dec / "descriptions.csv"),
                        "val_cases": 1,
                        "test_cases": 1,
                        "roi_size": [32, 64, 32],
                        "pixdim": [1.0, 1.0, 1.0],
                        "crop_foreground": False,
                        "samples_per_volume": 1,
                        "sw_batch_size": 1,
                    },
                    "model": tiny_bipvl_model(text=False, alignment=False),
                    "train": {"max_epochs": 1, "seed": 1, "monitor": "valid/mean_dice", "monitor_mode": "max"},
                }
            ),
        }
        # the inputs the README blocks name
        shutil.copy(polyps / "images" / "001.jpg", "frame.jpg")
        frames = sorted((colo / "resized_frame").rglob("*.jpg"))
        Path("gallery").mkdir()
        for name, frame in zip("abc", frames[2:5]):
            shutil.copy(frame, f"gallery/{name}.jpg")
        shutil.copy(frames[0], "query.jpg")
        shutil.copy(dec / "imagesTr" / "case_001.nii.gz", "volume.nii.gz")
        yield {"root": root, "runs": runs, "polyps": polyps, "colo": colo, "mosi": mosi, "dec": dec}
    finally:
        os.chdir(cwd)


def test_segmentation_api_matches_the_cli_at_each_image_size(place):
    seg = gpfuse.load(place["runs"]["ea_dk"])
    image = Image.open("frame.jpg")
    wide = np.zeros((30, 70, 3), np.uint8)
    results = seg.predict(["frame.jpg", image, np.asarray(image), wide])
    assert [r.mask.shape for r in results] == [(40, 40)] * 3 + [(30, 70)]
    assert np.array_equal(results[0].probability, results[1].probability)
    assert results[0].mask.dtype == bool and results[0].probability.dtype == np.float32
    out = predict(place["runs"]["ea_dk"], place["polyps"], Path("cli_seg"), save_probabilities=True)
    saved = np.asarray(Image.open(out / "probabilities" / "001.png"))
    assert np.abs(saved.astype(int) - np.floor(results[0].probability * 255 + 0.5)).max() == 0  # one path
    with pytest.raises(ValueError, match=r"image 0: an array image must be \(H, W, 3\) uint8"):
        seg.predict([np.zeros((8, 8), np.uint8)])
    with pytest.raises(ValueError, match="must be"):
        seg.predict(np.zeros((8, 8, 4), np.uint8))


def test_reid_api_embeds_normalised_and_ranks_as_the_cli(place):
    reid = gpfuse.load(place["runs"]["gpf_net"])
    gallery = sorted(str(p) for p in Path("gallery").iterdir())
    emb = reid.embed(gallery)  # no reports: image-only for every image
    assert emb.shape == (3, 32) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    with_text = reid.embed(gallery, reports=["flat polyp", "", "flat polyp"])
    assert np.allclose(with_text[1], emb[1], atol=1e-6) and not np.allclose(with_text[0], emb[0])
    order, dist = reid.rank(["query.jpg"], gallery, top_k=2)
    # against distances computed here from the raw embeddings (what evaluation ranks): the two nearest, in order
    query, raw = (torch.from_numpy(reid.embed(x, normalize=False)) for x in (["query.jpg"], gallery))
    expected = compute_distance_matrix(query, raw, reid.metric)
    nearest = np.argsort(expected.numpy()[0], kind="stable")[:2]
    assert order.tolist() == [nearest.tolist()] and np.allclose(dist[0], expected.numpy()[0][nearest], atol=1e-6)
    with pytest.raises(ValueError, match="2 reports for 3 images"):
        reid.embed(gallery, reports=["a", "b"])
    rows = list(csv.DictReader(predict(place["runs"]["gpf_net"], place["colo"], Path("ranks.csv")).open()))
    first = [r for r in rows if r["query"] == rows[0]["query"]]
    query_reports = None
    from gpfuse.tasks.kinds import TASK_KINDS
    from gpfuse.tasks.runner import load_run_config

    data = TASK_KINDS["retrieval"].data(load_run_config(place["runs"]["gpf_net"]), None, str(place["colo"]))
    data.setup()
    q = next(i for i, it in enumerate(data.datasets["query"].items) if it.path == rows[0]["query"])
    query_reports = [data.datasets["query"].reports[q]]
    g_items = data.datasets["gallery"].items
    order, dist = reid.rank(
        [rows[0]["query"]],
        [it.path for it in g_items],
        top_k=len(g_items),
        query_reports=query_reports,
        gallery_reports=data.datasets["gallery"].reports,
    )
    query_item = data.datasets["query"].items[q]
    api = [
        g_items[j].path
        for j in order[0]
        if not (g_items[j].pid == query_item.pid and g_items[j].camid == query_item.camid)
    ]
    # the CLI ranks through the same code: the same distance for every gallery image, so the same list up to
    # exact ties (the synthetic gallery repeats near-identical frames of one polyp)
    api_distance = {g_items[j].path: float(d) for j, d in zip(order[0], dist[0])}
    cli = [float(r["distance"]) for r in first]
    assert cli == pytest.approx([api_distance[r["gallery"]] for r in first], abs=1e-5)
    assert cli == pytest.approx([api_distance[p] for p in api[: len(first)]], abs=1e-5)
    assert max(cli) - min(cli) > 0.1  # not collapsed onto one point


def test_sentiment_api_matches_the_cli_and_names_missing_inputs(place):
    sentiment = gpfuse.load(place["runs"]["grf"])
    rows = list(csv.DictReader(predict(place["runs"]["grf"], place["mosi"], Path("scores.csv")).open()))
    from gpfuse.data.mosi import load_mosi_folder

    test = load_mosi_folder(place["mosi"])["test"]
    scores = sentiment.predict(test.texts.tolist(), audio=test.features["audio"][:, 0])
    cli = [float(r["score"]) for r in rows if r["split"] == "test"]
    assert np.allclose(scores, cli, atol=1e-4)
    with pytest.raises(ValueError, match="needs 'audio' features"):
        sentiment.predict(["good"])
    with pytest.raises(ValueError, match="audio: every row must be"):
        sentiment.predict(["good"], audio=np.zeros((1, 5)))
    audio = test.features["audio"][:2]  # (2, 1, D) with its stored mask: what predict scored above
    masked = sentiment.predict(test.texts[:2].tolist(), audio=audio, masks={"audio": test.masks["audio"][:2]})
    np.testing.assert_allclose(masked, scores[:2], atol=1e-6)
    with pytest.raises(ValueError, match="audio: row 1 has no real step"):
        sentiment.predict(["good", "bad"], audio=audio, masks={"audio": np.array([[True], [False]])})
    with pytest.raises(ValueError, match=r"masks for unknown modalities \['video'\]"):
        sentiment.predict(["good"], audio=audio[:1], masks={"video": np.ones((1, 1), bool)})
    with pytest.raises(ValueError, match="reads .*not \\['vision'\\]"):
        sentiment.predict(["good"], audio=np.zeros((1, 73)), vision=np.zeros((1, 5)))


def test_volume_api_on_the_input_grid_from_a_path_or_an_array(place):
    import nibabel as nib

    seg3d = gpfuse.load(place["runs"]["bipvl_seg"])
    from_file = seg3d.predict("volume.nii.gz")
    source = nib.load("volume.nii.gz")
    assert from_file.shape == source.shape and from_file.dtype == np.uint8
    from_array = seg3d.predict(np.asarray(source.dataobj), spacing=(1.0, 1.0, 2.0))
    assert (from_array == from_file).mean() > 0.999
    assert seg3d.class_names[0] == "background" and len(seg3d.class_names) == 3
    with pytest.raises(ValueError, match="must be numeric \\(X, Y, Z\\)"):
        seg3d.predict(np.zeros((8, 8)))
    with pytest.raises(FileNotFoundError, match="volume not found"):
        seg3d.predict("nowhere.nii.gz")


def test_a_model_folder_predicts_on_its_own_from_another_directory(place, tmp_path, monkeypatch):
    import nibabel as nib

    moved = shutil.copytree(place["runs"]["bipvl_seg"] / "model", tmp_path / "just_the_model")
    volume = shutil.copy("volume.nii.gz", tmp_path / "v.nii.gz")
    monkeypatch.chdir(tmp_path)  # the training data's relative paths do not resolve from here
    labels = gpfuse.load(moved).predict(volume)
    assert labels.shape == (32, 64, 16)
    out = predict(place["runs"]["bipvl_seg"], volume, tmp_path / "pred")  # the CLI path, from here too
    saved = np.asarray(nib.load(out / "v_seg.nii.gz").dataobj)  # type: ignore[operator]
    assert np.array_equal(saved, labels) and len(np.unique(labels)) > 1


def test_models_save_and_load_the_hugging_face_way(place, tmp_path):
    from gpfuse.models import EADK, GRF, from_pretrained

    folder = place["runs"]["grf"] / "model"
    model = GRF.from_pretrained(folder)
    assert isinstance(model, GRF) and (folder / "config.json").is_file()
    again = model.save_pretrained(tmp_path / "copy")
    assert sorted(p.name for p in again.iterdir()) == ["config.json", "model.safetensors"]
    assert all(
        torch.equal(a, b) for a, b in zip(model.state_dict().values(), from_pretrained(again).state_dict().values())
    )
    legacy = shutil.copytree(folder, tmp_path / "legacy")
    (legacy / "config.json").rename(legacy / "model.json")  # a folder saved before config.json
    assert isinstance(from_pretrained(legacy), GRF)
    with pytest.raises(ValueError, match="holds a GRF, not a EADK"):
        EADK.from_pretrained(folder)


@pytest.mark.parametrize("kind", ["ea_dk", "gpf_net", "grf", "bipvl_seg"])
def test_eval_scores_another_labelled_set_beside_metrics_json(place, kind, tmp_path):
    run = place["runs"][kind]
    before = (run / "metrics.json").read_bytes()
    data = {"ea_dk": "polyps", "gpf_net": "colo", "grf": "mosi", "bipvl_seg": "dec"}[kind]
    elsewhere = shutil.copytree(place[data], tmp_path / "hidden")  # the set sits apart from the training data
    code, output = run_gpfuse("eval", run, "--data", elsewhere, "--name", "hidden")
    assert code == 0, output
    assert (run / "metrics.json").read_bytes() == before  # never over metrics.json
    scored = json.loads((run / "metrics_hidden.json").read_text())
    own = json.loads(before)
    if kind in ("gpf_net", "grf"):  # the same layout's test split (query/gallery): the run's own test figures
        assert scored["test"] == pytest.approx(own["test"], abs=1e-6)
    elif kind == "ea_dk":  # every image of the folder, as the test set named --name: what predict scores there
        assert set(scored["test"]) >= {"hidden/Dice", "hidden/wFm", "hidden/Sm"}
        with (predict(run, elsewhere, tmp_path / "pred") / "predictions.csv").open() as f:  # type: ignore[operator]
            dice = [float(r["dice"]) for r in csv.DictReader(f)]
        assert len(dice) == len(list((elsewhere / "images").iterdir())) > 1
        assert float(np.mean(dice)) == pytest.approx(scored["test"]["hidden/Dice"], abs=1e-5)
    else:  # every labelled case: the mean over cases of what predict scores on each
        assert "valid" not in scored
        images, labels = elsewhere / "imagesTr", elsewhere / "labelsTr"
        per_case = _predicted_dice(run, images, labels, tmp_path / "pred", classes=3)
        assert len(per_case) == 5
        assert float(np.mean([np.mean(d) for d in per_case.values()])) == pytest.approx(
            scored["test"]["mean_dice"], abs=1e-5
        )
    assert scored["data"] == str(elsewhere)
    code, output = run_gpfuse("eval", run, "--data", elsewhere, "--name", "../metrics")
    assert code == 2 and "--name '../metrics'" in output


def _readme_blocks() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Use from Python", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_every_readme_python_block_runs(place, capsys):
    blocks = _readme_blocks()
    assert len(blocks) == 4
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert "(40, 40) bool" in printed and "(3, 32)" in printed and "['background'" in printed


def _predicted_dice(run: Path, images: Path, labels: Path, out: Path, classes: int) -> dict[str, list[float]]:
    """Per NIfTI file of ``images``: the Dice of each class 1..classes-1 of ``gpfuse predict``'s label volume
    against the label file of the same name (1 where both are empty)."""
    import nibabel as nib

    folder = predict(run, images, out)
    scores = {}
    for image in sorted(images.glob("*.nii.gz")):
        case = image.name.removesuffix(".nii.gz")
        pred = np.asarray(nib.load(folder / f"{case}_seg.nii.gz").dataobj)  # type: ignore[operator]
        label = np.asarray(nib.load(labels / image.name).dataobj)
        masks = [(pred == c, label == c) for c in range(1, classes)]
        scores[case] = [1.0 if not (p.any() or g.any()) else 2 * (p & g).sum() / (p.sum() + g.sum()) for p, g in masks]
    return scores


def test_volume_predict_scores_each_test_case_as_evaluation_did(place, tmp_path):
    """``gpfuse predict`` of the run's own test case, scored against its label file, gives the Dice per class
    that evaluation wrote to ``samples/test.csv``."""
    run = place["runs"]["bipvl_seg"]
    with (run / "samples" / "test.csv").open() as f:
        evaluated = {r["case"]: [float(v) for k, v in r.items() if k.startswith("dice/")] for r in csv.DictReader(f)}
    images = tmp_path / "images"
    images.mkdir()
    for case in evaluated:
        shutil.copy(place["dec"] / "imagesTr" / f"{case}.nii.gz", images)
    predicted = _predicted_dice(run, images, place["dec"] / "labelsTr", tmp_path / "pred", classes=3)
    assert predicted.keys() == evaluated.keys()
    for case, dice in evaluated.items():
        assert predicted[case] == pytest.approx(dice, abs=1e-5), case
        assert len(set(dice)) > 1 and max(dice) > 0  # a prediction, not an empty volume
