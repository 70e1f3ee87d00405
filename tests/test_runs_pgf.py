"""PGF-Net through the sentiment pipeline: token ids from the backbone's tokenizer (truncation counted and
reported, empty transcripts named), a whole run with eval and predict, the MMSA pickle's raw text."""

from __future__ import annotations

import csv
import json
import logging

import pytest
import torch

from conftest import assert_predicted_scores_match_eval
from gpfuse.config import validate_config
from gpfuse.data.synthetic import write_synthetic_mosi
from gpfuse.data.synthetic_pickles import write_mmsa_pickle
from gpfuse.tasks.kinds import TASK_KINDS
from gpfuse.tasks.runner import evaluate, predict, run_dir_for, train


@pytest.fixture(scope="module")
def mosi(tmp_path_factory):
    return write_synthetic_mosi(tmp_path_factory.mktemp("pgf") / "mosi", n_videos=10, segments_per_video=4)


def _config(tmp_path, root, text_len=16, **model):
    return validate_config(
        {
            "name": "tiny_pgf",
            "output_dir": str(tmp_path / "runs"),
            "data": {"source": "mosi", "root": str(root), "batch_size": 8, "max_len": {"text": text_len, "audio": 1}},
            "model": {"name": "pgf_net", "fusion_heads": 2, "lora_rank": 4, "adapter": 8, **model},
            "train": {"max_epochs": 2, "warmup_epochs": 0, "lr": 1e-3, "accelerator": "cpu"},
        },
        "test",
    )


def test_token_ids_from_the_backbone_tokenizer_with_truncation_counted(tmp_path, mosi, caplog):
    cfg = _config(tmp_path, mosi, text_len=6)
    with caplog.at_level(logging.WARNING):
        data = TASK_KINDS["regression"].data(cfg, None, None)
        data.setup()
    train_split = data.splits["train"]
    lengths = train_split.masks["text"].sum(1)
    assert train_split.token_ids.shape == (len(train_split), 6) and lengths.max() == 6
    assert data.input_dims == {"audio": 73}  # text is read by the model's own backbone
    assert data.truncated["train"] and "longer than data.max_len.text=6 tokens and were truncated" in caplog.text
    data.save_stats(tmp_path / "data_stats.json")
    report = json.loads((tmp_path / "text_tokens.json").read_text())
    assert report["truncated"]["train"] == len(data.truncated["train"]) and report["tokenizer"] == "minilm"
    item = next(iter(data.train_dataloader()))
    assert item["text_ids"].dtype == torch.long and item["text_ids"].shape == (8, 6)
    assert item["text_ids"][:, 0].eq(101).all() and "text" not in item  # [CLS] first, no precomputed states


def test_an_empty_transcript_is_named_and_nothing_else_is_lost(tmp_path, mosi, caplog):
    root = tmp_path / "mosi"
    write_synthetic_mosi(root, n_videos=10, segments_per_video=4)
    path = root / "transcripts.csv"
    rows = list(csv.reader(path.open()))
    rows[3][3] = "   "  # the third segment (vid0000synth, clip 3) says nothing
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    with caplog.at_level(logging.WARNING):
        data = TASK_KINDS["regression"].data(_config(tmp_path, root), None, None)
        data.setup()
    assert "1 segment(s) without a transcript dropped" in caplog.text and "vid0000synth_3" in caplog.text
    assert sum(len(s) for s in data.splits.values()) == 10 * 4 - 1


@pytest.mark.slow
def test_pgf_net_run_logs_gates_evaluates_and_predicts(tmp_path, mosi, recwarn):
    cfg = _config(tmp_path, mosi)
    metrics = train(cfg)
    # its frozen language model is in eval mode on purpose: Lightning's warning about it is silenced
    assert not [w for w in recwarn if "in eval mode" in str(w.message)]
    assert {"MAE", "Corr", "Has0_F1_score", "Mult_acc_7"} <= set(metrics["test"])
    assert metrics["parameters"]["trainable"] < metrics["parameters"]["total"] / 2  # frozen backbone
    run = run_dir_for(cfg)
    assert (run / "gates.png").is_file() and (run / "text_tokens.json").is_file()
    header = (run / "logs" / "attempt_0" / "metrics.csv").read_text().splitlines()[0]
    assert "gate/step5_mean" in header  # one gate per fused layer (6 for MiniLM)
    again = evaluate(run)
    assert again["test"]["MAE"] == pytest.approx(metrics["test"]["MAE"], abs=1e-5)
    assert again["valid"] == pytest.approx(metrics["valid"], abs=1e-5)  # the fit's best-epoch figures
    rows = predict(run, mosi, tmp_path / "scores.csv").read_text().splitlines()
    assert rows[0] == "id,split,score,label" and len(rows) == 10 * 4 + 1
    assert_predicted_scores_match_eval(run, mosi, tmp_path / "again.csv")


@pytest.mark.slow
def test_mmsa_raw_text_is_retokenised(tmp_path):
    path = write_mmsa_pickle(tmp_path / "unaligned.pkl", n_per_split=(8, 4, 4))
    cfg = _config(tmp_path, path)
    cfg.data.source, cfg.data.modalities, cfg.data.max_len = "pickle", ["text", "audio", "vision"], {"text": 16}
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"max_epochs": 1})})
    metrics = train(cfg)
    assert "MAE" in metrics["test"]
    # the pickle's text features are not what the token model reads: predict retokenises raw_text as eval does
    assert_predicted_scores_match_eval(run_dir_for(cfg), path, tmp_path / "scores.csv")
