"""Shared fixtures: deterministic seeds and the location of the shared datasets."""

from __future__ import annotations

import contextlib
import io
import os
import random
import sys
import tempfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("GPFUSE_DATA", REPO.parent / "shared" / "data"))


# the suite's caches (text states, decoded files) stay out of the user's ~/.cache; subprocesses inherit it
os.environ.setdefault("GPFUSE_CACHE", tempfile.mkdtemp(prefix="gpfuse-test-cache-"))

# `make test` runs two pytest-xdist workers on the machine's two cores: one thread each (and in what they start),
# or four threads would contend for two cores
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


# `make test` hands whole files to the two workers (--dist loadfile --no-loadscope-reorder) in collection order, one
# file each time a worker runs dry: the slowest files first (longest-processing-time-first), or one of them started
# last runs alone while the other core idles. Measured on a 2-core AMD EPYC (docs/results.md); the rest keep their
# order. A stale list costs balance, never a result.
SLOWEST_FILES = (
    "test_export_volume.py",
    "test_ddp.py",
    "test_types.py",
    "test_export.py",
    "test_report.py",
    "test_precision.py",
    "test_runs_bipvl.py",
    "test_export_reid_text.py",
    "test_export_sentiment.py",
    "test_models_bipvl_seg.py",
    "test_api.py",
    "test_resume_rules.py",
    "test_resume.py",
    "test_runs_reid.py",
    "test_runs_seg.py",
    "test_video.py",
    "test_runs_pgf.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    shuffle = os.environ.get("GPFUSE_TEST_SHUFFLE")
    if shuffle:  # `make test-shuffled`: files and the tests in each in a random order, to catch order dependence
        rng = random.Random(int(shuffle))
        files: dict[Path, list[pytest.Item]] = {}
        for item in items:
            files.setdefault(item.path, []).append(item)
        groups = list(files.values())
        rng.shuffle(groups)
        for group in groups:
            rng.shuffle(group)
        items[:] = [item for group in groups for item in group]
        return
    rank = {name: i for i, name in enumerate(SLOWEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def chromium() -> str:
    """The headless Chromium of tests/browser.py; the tests that need it skip where it is not installed."""
    from browser import NOT_FOUND, find_chromium

    path = find_chromium()
    if path is None:
        pytest.skip(NOT_FOUND)
    return path


def run_gpfuse(*args: str) -> tuple[int, str]:
    """Run the ``gpfuse`` console script in this process: (exit code, everything it printed, one line per
    message: rich's wrapping folded away)."""
    from gpfuse import cli

    out = io.StringIO()
    argv, sys.argv = sys.argv, ["gpfuse", *map(str, args)]
    cli._debug = False
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            try:
                cli.main()
                code = 0
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        sys.argv = argv
    return code, out.getvalue()


@pytest.fixture
def mosi_root() -> Path:
    root = SHARED_DATA / "mosi"
    if not (root / "labels.csv").is_file():
        pytest.skip(f"real CMU-MOSI not found at {root} (set GPFUSE_DATA to the shared data folder)")
    return root


@pytest.fixture
def cuhk01_root() -> Path:
    root = SHARED_DATA / "cuhk01"
    if not (root / "campus").is_dir():
        pytest.skip(f"real CUHK01 not found at {root / 'campus'} (set GPFUSE_DATA to the shared data folder)")
    return root


def train_losses(optimizer: torch.optim.Optimizer, compute_loss, steps: int) -> list[float]:
    """Run ``steps`` optimisation steps of ``compute_loss()`` (a closure returning the loss); the losses."""
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = compute_loss()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def colo_pair_data(root: Path | str) -> dict:
    """The data section of a tiny Colo-Pair run (48 px frames, P x K = 2 x 2)."""
    return {"source": "colo_pair", "root": str(root), "image_size": [48, 48], "batch_size": 4, "num_instances": 2}


def polyp_folder_data(folder: Path | str) -> dict:
    """The data section of a tiny image/mask-folder run (32 px, a random split)."""
    return {"source": "polyp_folders", "train": [str(folder)], "split": "random", "image_size": 32, "batch_size": 4}


def mosi_data(root: Path | str, cache: Path | str, batch_size: int = 8, text_len: int = 16) -> dict:
    """The data section of a tiny MOSI-layout run (text + one audio step)."""
    return {
        "source": "mosi",
        "root": str(root),
        "cache_dir": str(cache),
        "batch_size": batch_size,
        "max_len": {"text": text_len, "audio": 1},
    }


def tiny_grf(**overrides) -> dict:
    """The model section of a tiny two-modality GRF (d_model 16, one layer)."""
    return {
        "name": "grf",
        "order": ["text", "audio"],
        "d_model": 16,
        "num_heads": 2,
        "num_layers": 1,
        "ffn_dim": 32,
        **overrides,
    }


def tiny_grf_run(folder: Path, mosi: Path, **train) -> dict:
    """A raw run config: :func:`tiny_grf` on the MOSI folder ``mosi``, runs and text cache under ``folder``, one
    epoch on the CPU (``train`` overrides)."""
    return {
        "name": "tiny",
        "output_dir": str(folder / "runs"),
        "data": mosi_data(mosi, folder / "cache"),
        "model": tiny_grf(),
        "train": {"max_epochs": 1, "warmup_epochs": 0, "accelerator": "cpu", **train},
    }


def tiny_gpf_net(**overrides) -> dict:
    """The model section of a tiny GPF-Net (dim 16, one layer each) on ImageNet EfficientNet-Lite0: a random-init
    encoder gives the same features for every image, which would leave rankings to ties."""
    return {
        "name": "gpf_net",
        "image_encoder": "efficientnet_lite0",
        "image_weights": "imagenet",
        "text_model": None,
        "dim": 16,
        "num_fusion_layers": 1,
        "fusion_heads": 2,
        "fusion_ffn": 16,
        "final_layers": 1,
        "final_heads": 2,
        "final_ffn": 16,
        **overrides,
    }


# One epoch at a near-zero rate: at the usual rate one epoch collapses a tiny GPF-Net's embeddings onto one point
STILL_REID_TRAIN = {"max_epochs": 1, "seed": 3, "lr": 1e-9, "monitor": "valid/mAP", "monitor_mode": "max"}


def still_reid_run(folder: Path, name: str = "gpf", **model) -> tuple[Path, Path]:
    """A tiny GPF-Net (``tiny_gpf_net(**model)``) trained one epoch at a near-zero rate on 6 synthetic Colo-Pair
    videos under ``folder``: (run folder, data root). ImageNet weights and the still rate give distinct,
    image-dependent embeddings, so the rankings tests compare are not decided by ties."""
    from gpfuse.config import validate_config
    from gpfuse.data.synthetic_reid import write_synthetic_colo_pair
    from gpfuse.tasks.runner import run_dir_for, train

    colo = write_synthetic_colo_pair(folder / "colo", n_videos=6, frames_per_view=2, size=48)
    raw = {
        "name": name,
        "output_dir": str(folder / "runs"),
        "data": colo_pair_data(colo),
        "model": tiny_gpf_net(**model),
        "train": STILL_REID_TRAIN,
    }
    cfg = validate_config(raw, "test")
    train(cfg)
    return run_dir_for(cfg), colo


def two_layer_minilm(folder: Path) -> Path:
    """The shipped MiniLM cut to its first 2 layers, saved with its tokenizer as a local backbone folder (exports of
    models that hold it stay quick)."""
    from transformers import AutoModel, AutoTokenizer

    from gpfuse.encoders.text import default_text_model_path

    model = AutoModel.from_pretrained(default_text_model_path(), local_files_only=True)
    model.encoder.layer = model.encoder.layer[:2]
    model.config.num_hidden_layers = 2
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(default_text_model_path(), local_files_only=True).save_pretrained(folder)
    return folder


def tiny_bipvl_model(**overrides) -> dict:
    """The model section of a tiny BiPVL-Seg (feature size 12). Swin depths (1, 2, 1, 1): every code path of the
    paper's (2, 2, 2, 2) (stage 2 keeps its shifted-window block) in three quarters of the time; the model tests
    (tests/test_models_bipvl_seg.py) use the paper's depths."""
    return {"name": "bipvl_seg", "feature_size": 12, "depths": [1, 2, 1, 1], **overrides}


def tiny_bipvl(root: Path | str, output: Path | str, name: str = "tiny_bipvl", test_cases: int = 1, **model) -> dict:
    """A one-epoch BiPVL-Seg run config (:func:`tiny_bipvl_model`, 32x64x32 patches) on a synthetic Decathlon
    folder."""
    root = Path(root)
    return {
        "name": name,
        "output_dir": str(output),
        "data": {
            "source": "decathlon",
            "root": str(root),
            "descriptions": str(root / "descriptions.csv"),
            "val_cases": 1,
            "test_cases": test_cases,
            "roi_size": [32, 64, 32],
            "samples_per_volume": 1,
            "crop_foreground": False,
            "sw_batch_size": 1,
        },
        "model": tiny_bipvl_model(fusion_heads=4, fusion_mlp=32, max_text_len=16) | model,
        "train": {
            "max_epochs": 1,
            "lr": 1e-3,
            "warmup_epochs": 0,
            "accelerator": "cpu",
            "monitor": "valid/mean_dice",
            "monitor_mode": "max",
        },
    }


def assert_predicted_scores_match_eval(run: Path, data: Path | str, out: Path) -> None:
    """``gpfuse predict`` of a sentiment run on its own data scores every test utterance as evaluation wrote in
    ``samples/test.csv`` (to 1e-5)."""
    import csv

    from gpfuse.tasks.runner import predict

    with (run / "samples" / "test.csv").open() as f:
        evaluated = {r["id"]: float(r["prediction"]) for r in csv.DictReader(f)}
    with predict(run, data, out).open() as f:  # type: ignore[union-attr]  # one process: a path
        predicted = {r["id"]: float(r["score"]) for r in csv.DictReader(f) if r["split"] == "test"}
    assert predicted.keys() == evaluated.keys() and len(evaluated) > 1
    worst = max(abs(predicted[k] - evaluated[k]) for k in evaluated)
    assert worst <= 1e-5, f"predict differs from eval by up to {worst:.3g}"
