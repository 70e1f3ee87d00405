"""PGF-Net: progressive gated fusion inside a frozen language model (arXiv 2508.15852, Fig. 2).

Top to bottom: audio and visual sequences are projected to the backbone's hidden size and concatenated
into one key/value bank with its padding mask; the text runs through a frozen BERT-family backbone whose
attention projections carry LoRA adapters (``peft``); after every encoder layer from ``L0`` on, a fusion
step (``fusion/in_lm_step.py``: cross-attention to the bank, per-dimension gated arbitration, bottleneck adapter)
rewrites the text states, which the next layer consumes; a regression head reads the final [CLS] state.

The fusion steps are attached with forward hooks on the backbone's own layers, so the backbone's code and
parameter names stay untouched and any BERT-family model with ``encoder.layer`` (BERT, RoBERTa, ELECTRA,
MiniLM, DeBERTa) works. Where the paper is silent, gpfuse chooses: LoRA alpha = rank (scaling 1),
dropout 0.1, on ``query``/``key``/``value``; the adapter starts as the identity; each modality's projection
is followed by a LayerNorm, which bounds the bank when utterance features hold outliers (the shared
CMU-MOSI test fold has openSMILE values 150 training standard deviations out, which drove an unnormalised
bank's predictions into the hundreds); no positional or modality embedding is added to the bank (each
modality has its own projection).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

import torch
from torch import Tensor, nn

from gpfuse.encoders.text import load_text_backbone
from gpfuse.fusion import build_fusion
from gpfuse.models.heads import regression_head
from gpfuse.models.io import PretrainedMixin
from gpfuse.models.outputs import RegressionOutput

if TYPE_CHECKING:
    from gpfuse.fusion.stacks import ProgressiveFusion

__all__ = ["PGFNet"]

#: depth the paper's L0 refers to (BERT-base); ``fusion_start`` is scaled from it to the backbone's depth
PAPER_DEPTH = 12


class PGFNet(PretrainedMixin, nn.Module):
    """PGF-Net.

    Args:
        input_dims: feature size of each non-text modality, e.g. ``{"audio": 73, "vision": 35}`` (text is
            read as token ids, ``batch["text_ids"]``/``batch["text_mask"]``).
        backbone: ``"minilm"`` (offline default, 6 layers, 384-d) or a local BERT-family folder (BERT-base
            is the paper's).
        lora_rank: LoRA rank (32; 0 for none). lora_targets: module names LoRA wraps.
        fusion_start: L0 in BERT-base layers (0, 3, 6 in the paper's ablation), scaled to the backbone's
            depth: fusion follows layers ``round(L0 * depth / 12)`` to ``depth - 1``.
        fusion_heads: cross-attention heads. gate: ``"arbitration"`` or ``"sum"`` (no-gate ablation).
        cross_attention: False uses the bank's mean instead (ablation). adapter: bottleneck size, 0 for none.
        dropout: in the fusion steps and the head.
        gate_bias: initial bias of the arbitration gate. The paper does not give it; 4 (g = 0.98) starts every
            fusion step close to "keep the text", so training starts from the pretrained backbone, as
            Flamingo's zero-initialised gates do; at 0 (g = 0.5) each fused layer halves the pretrained states
            and the model did not learn on CMU-MOSI in 3 epochs (docs/results.md).

    Output: :class:`RegressionOutput` with ``score`` (B,) and ``gates``: per fused layer the arbitration
    gate averaged over real text tokens (B, D) (the share each dimension keeps from the text).
    """

    text_input = "tokens"  # the sentiment data gives this model token ids from its backbone's tokenizer

    def __init__(
        self,
        input_dims: dict[str, int],
        backbone: str = "minilm",
        lora_rank: int = 32,
        lora_targets: Sequence[str] = ("query", "key", "value"),
        fusion_start: int = 0,
        fusion_heads: int = 8,
        gate: str = "arbitration",
        cross_attention: bool = True,
        adapter: int = 64,
        dropout: float = 0.1,
        gate_bias: float = 4.0,
    ) -> None:
        super().__init__()
        if not 0 <= fusion_start < PAPER_DEPTH:
            raise ValueError(
                f"fusion_start (L0, in BERT-base layers) must be in [0, {PAPER_DEPTH - 1}], got {fusion_start}"
            )
        self.backbone, layers = load_text_backbone(backbone)
        hidden = int(self.backbone.config.hidden_size)
        self.backbone.requires_grad_(False)
        if lora_rank:
            from peft import LoraConfig, inject_adapter_in_model

            config = LoraConfig(r=lora_rank, lora_alpha=lora_rank, lora_dropout=0.1, target_modules=list(lora_targets))
            inject_adapter_in_model(config, self.backbone)  # LoRA weights are new, hence trainable
        self.modalities = sorted(m for m in input_dims if m != "text")
        self.projections = nn.ModuleDict(
            {m: nn.Sequential(nn.Linear(input_dims[m], hidden), nn.LayerNorm(hidden)) for m in self.modalities}
        )
        self.start = round(fusion_start * len(layers) / PAPER_DEPTH)
        self.fusion = cast(
            "ProgressiveFusion",
            build_fusion(
                "progressive",
                num_layers=len(layers) - self.start,
                block=dict(
                    name="pgf_block",
                    dim=hidden,
                    num_heads=fusion_heads,
                    gate=gate,
                    cross_attention=cross_attention,
                    adapter=adapter,
                    dropout=dropout,
                    gate_bias=gate_bias,
                ),
            ),
        )
        for index, layer in enumerate(layers[self.start :]):
            layer.register_forward_hook(_FusionHook(self, index))
        self.head = regression_head(hidden, dropout)
        self._bank: tuple[Tensor, Tensor] | None = None
        self._gates: list[Tensor | None] = []

    def bank(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor] | None:
        """Projected audio/visual steps concatenated (B, sum L_m, D) with their mask, or None without any."""
        present = [m for m in self.modalities if m in batch]
        if not present:
            return None
        size = batch["text_ids"].shape[0]  # not len(): an int, which would fix the batch size of an export
        masks = []
        for m in present:
            x = batch[m]
            mask = batch.get(f"{m}_mask", torch.ones(x.shape[:2], dtype=torch.bool, device=x.device))
            if x.dim() != 3 or x.shape[0] != size or tuple(mask.shape) != tuple(x.shape[:2]):
                raise ValueError(
                    f"{m}: features {tuple(x.shape)} and mask {tuple(mask.shape)} must be (B={size}, L) "
                    f"and (B, L, D) with the same B and L as each other and B as the text"
                )
            masks.append(mask.bool())
        return torch.cat([self.projections[m](batch[m]) for m in present], dim=1), torch.cat(masks, dim=1)

    def forward(self, batch: dict[str, Tensor]) -> RegressionOutput:
        mask = batch["text_mask"]
        self._bank, self._gates = self.bank(batch), []
        try:
            states = self.backbone(input_ids=batch["text_ids"], attention_mask=mask.long()).last_hidden_state
            weights = mask.unsqueeze(-1).to(states.dtype)
            gates = [None if g is None else (g * weights).sum(1) / weights.sum(1).clamp_min(1) for g in self._gates]
        finally:
            self._bank, self._gates = None, []
        return RegressionOutput(self.head(states[:, 0]).squeeze(-1), None, gates)


class _FusionHook:
    """The forward hook that runs fusion step ``index`` on a backbone layer's output (Fig. 1: after layer
    ``fusion_start + index``). An object, not a closure: ``copy.deepcopy`` of the model copies it with the model,
    so a copy (EMA, SWA, export) fuses with its own steps instead of the original's."""

    def __init__(self, model: PGFNet, index: int) -> None:
        self.model, self.index = model, index

    def __call__(self, module: nn.Module, args: tuple, output):
        model = self.model
        if model._bank is None:
            return output
        states = output[0] if isinstance(output, tuple) else output
        fused, gate = model.fusion.step(self.index, states, *model._bank)
        model._gates.append(gate)
        return (fused, *output[1:]) if isinstance(output, tuple) else fused
