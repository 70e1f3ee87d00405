"""GPF-Net runs end to end on generated Colo-Pair and Market-1501 folders: train, both text protocols,
eval (metrics.json + rank list), resume refusal for another model, bad input through the data module."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import yaml

from conftest import STILL_REID_TRAIN, colo_pair_data, tiny_gpf_net
from gpfuse.config import validate_config
from gpfuse.data.synthetic_reid import write_synthetic_colo_pair, write_synthetic_market1501
from gpfuse.models.io import CheckpointMismatchError
from gpfuse.tasks.runner import evaluate, predict, run_dir_for, train

MODEL = {
    "name": "gpf_net",
    "image_encoder": "efficientnet_lite0",
    "image_weights": None,
    "dim": 32,
    "num_fusion_layers": 2,
    "fusion_heads": 4,
    "fusion_ffn": 64,
    "final_layers": 1,
    "final_ffn": 64,
    "max_text_len": 16,
}


@pytest.fixture(scope="module")
def colo(tmp_path_factory):
    return write_synthetic_colo_pair(tmp_path_factory.mktemp("d") / "colo", n_videos=10, frames_per_view=2, size=48)


def _config(tmp_path, source, root, **data):
    return validate_config(
        {
            "name": f"tiny_{source}",
            "output_dir": str(tmp_path / "runs"),
            "data": {
                "source": source,
                "root": str(root),
                "image_size": [48, 48],
                "batch_size": 8,
                "num_instances": 2,
                "val_ids": 2,
                **data,
            },
            "model": {**MODEL, **({"text_model": None} if source != "colo_pair" else {})},
            "train": {
                "max_epochs": 2,
                "accelerator": "cpu",
                "monitor": "valid/mAP",
                "monitor_mode": "max",
                "warmup_epochs": 0,
            },
        },
        "test",
    )


@pytest.mark.slow
def test_gpf_net_on_colo_pair_reports_both_protocols_and_evaluates(tmp_path, colo):
    cfg = _config(tmp_path, "colo_pair", colo)
    metrics = train(cfg)
    assert {f"{p}/{k}" for p in ("own", "query") for k in ("mAP", "rank1", "rank5", "mINP")} <= set(metrics["test"])
    assert metrics["test"]["mAP"] == metrics["test"]["own/mAP"]  # data.select_protocol: own by default
    run = run_dir_for(cfg)
    assert (run / "rank_list.png").is_file() and (run / "gates.png").is_file()
    assert "path\tpid\tcamid\tgroup" in (run / "splits" / "query.txt").read_text()
    again = evaluate(run)
    assert again["test"]["query/mAP"] == pytest.approx(metrics["test"]["query/mAP"], abs=1e-6)
    assert again["valid"] == pytest.approx(metrics["valid"], abs=1e-5)  # the fit's best-epoch figures
    assert json.loads((run / "metrics.json").read_text())["figures"] == [str(run / "rank_list.png")]


@pytest.mark.slow
def test_predict_ranks_under_the_protocol_the_run_reports(tmp_path):
    """A run that selects and reports the query protocol writes its per-query samples under it, and
    ``gpfuse predict`` ranks every test query exactly as they say."""
    colo = write_synthetic_colo_pair(tmp_path / "colo", n_videos=6, frames_per_view=2, size=48)
    raw = {
        "name": "gpf_query",
        "output_dir": str(tmp_path / "runs"),
        "data": {**colo_pair_data(colo), "select_protocol": "query"},
        "model": tiny_gpf_net(text_model="minilm", max_text_len=16),
        "train": STILL_REID_TRAIN,
    }
    cfg = validate_config(raw, "test")
    test = train(cfg)["test"]
    run = run_dir_for(cfg)
    samples = json.loads((run / "samples" / "test.json").read_text())
    assert samples["protocol"] == "query" and test["mAP"] == test["query/mAP"]
    aps = [q["AP"] for q in samples["queries"] if q["AP"] is not None]
    assert float(np.mean(aps)) == pytest.approx(test["query/mAP"], abs=1e-6)
    predicted: dict[str, list[tuple[str, float]]] = {}
    with predict(run, colo, tmp_path / "ranks.csv").open() as f:  # type: ignore[union-attr]
        for r in csv.DictReader(f):
            predicted.setdefault(r["query"], []).append((r["gallery"], float(r["distance"])))
    assert predicted.keys() == {q["query"] for q in samples["queries"]}
    for q in samples["queries"]:
        assert [g for g, _ in predicted[q["query"]]] == [t["gallery"] for t in q["top"]], q["query"]
        assert [d for _, d in predicted[q["query"]]] == pytest.approx([t["distance"] for t in q["top"]], abs=1e-5)


@pytest.mark.slow
def test_image_only_on_market1501_and_model_mismatch(tmp_path):
    root = write_synthetic_market1501(tmp_path / "market", n_ids=10, images_per_id=4)
    cfg = _config(tmp_path, "market1501", root, protocols=["own"], batch_size=4, rerank=True, ap="trapezoid")
    metrics = train(cfg)
    assert {"own/mAP", "own+rerank/mAP"} <= set(metrics["test"]) and "query/mAP" not in metrics["test"]
    for extra in sorted((root / "query").iterdir())[1:]:
        extra.unlink()  # a test split of one query still evaluates (its tensors keep their sample axis)
    one = _config(tmp_path / "one", "market1501", root, protocols=["own"], batch_size=4)
    one_query = train(one)["test"]
    (sample,) = json.loads((run_dir_for(one) / "samples" / "test.json").read_text())["queries"]
    assert sample["AP"] == pytest.approx(one_query["own/mAP"], abs=1e-6)
    assert one_query["own/rank1"] == float(sample["first_match"] == 1)
    image_only_query = _config(tmp_path / "q", "market1501", root, select_protocol="query", batch_size=4)
    with pytest.raises(ValueError, match=r"select_protocol is 'query'.*model.text_model"):
        train(image_only_query)  # never the own-protocol figure in its place
    run = run_dir_for(cfg)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["model"]["dim"] = 64  # the saved weights are for dim 32
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(CheckpointMismatchError, match="model.dim: 32 vs 64"):
        evaluate(run)


def test_validation_is_required_and_bad_reports_are_named(tmp_path, colo):
    from gpfuse.tasks.reid_data import ReIDDataModule

    no_val = _config(tmp_path, "colo_pair", colo, val_ids=0)
    with pytest.raises(ValueError, match="val_ids must be >= 1"):
        ReIDDataModule(no_val.data, text_model="minilm").setup()
    bad = tmp_path / "bad"
    write_synthetic_colo_pair(bad, n_videos=6, frames_per_view=1, size=32)
    table = next(bad.glob("*.csv"))
    table.write_text(table.read_text().replace("Eng_text", "text"))
    with pytest.raises(ValueError, match="Eng_text"):
        ReIDDataModule(_config(tmp_path, "colo_pair", bad).data, text_model="minilm").setup()


def test_empty_report_gives_an_all_false_text_mask(tmp_path):
    from gpfuse.tasks.reid_data import ReIDDataModule

    root = write_synthetic_colo_pair(tmp_path / "colo", n_videos=8, frames_per_view=1, size=32)
    table = next(root.glob("*.csv"))
    lines = table.read_text().splitlines()
    first_id = lines[1].split(",")[0]
    table.write_text("\n".join([lines[0], f"{first_id},", *lines[2:]]) + "\n")
    dm = ReIDDataModule(_config(tmp_path, "colo_pair", root, missing_report="empty").data, text_model="minilm")
    dm.setup()
    tokens = dm.collate.tokens
    assert not tokens[""][1].any() and all(m.any() for t, (_, m) in tokens.items() if t)


@pytest.mark.slow
def test_folds_are_summarised_over_runs(tmp_path, colo):
    from gpfuse.tasks.runner import train_seeds

    cfg = _config(tmp_path, "colo_pair", colo, protocols=["own"])
    cfg.train.max_epochs = 1
    summary = train_seeds(cfg, seeds=[7], folds=[0, 1])
    per_fold = [
        json.loads((tmp_path / "runs" / "tiny_colo_pair" / f"fold_{f}" / "seed_7" / "metrics.json").read_text())
        for f in (0, 1)
    ]
    assert summary["folds"] == [0, 1]
    values = [m["test"]["own/mAP"] for m in per_fold]
    assert summary["test"]["own/mAP"][0] == pytest.approx(sum(values) / 2)
    queries = [
        (tmp_path / "runs" / "tiny_colo_pair" / f"fold_{f}" / "seed_7" / "splits" / "query.txt").read_text()
        for f in (0, 1)
    ]
    assert queries[0] != queries[1]  # each fold tests other videos
