"""GRF: Gated Recursive Fusion (Shihata 2025, arXiv 2507.02985) for utterance-level sentiment regression.

Figure 1 of the paper, top to bottom: each modality is projected to ``d_model`` with sinusoidal
positions; the state starts as the first modality in ``order``; every next modality is fused into the
state by a block of symmetric cross-attention (two Transformer-decoder stacks) + masked mean pooling + a
Gated Fusion Unit; a regressor reads the final state and an auxiliary regressor reads the first fused
state (public code, loss weight 0.4 set in the task; the paper does not mention it).

Unlike the public code, real sequence lengths are masked (it padded to full length, unmasked), and the
auxiliary regressor exists only where it supervises an intermediate state: with two modalities the first
fused state IS the final one, so the public code's auxiliary loss is a second head on the main head's input
(an ensemble term, not the intermediate supervision it stands for). gpfuse therefore builds no auxiliary
head for n = 2, and skips it at run time when missing modalities leave a single fusion step.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from torch import Tensor, nn

from gpfuse.encoders import SequenceProjection
from gpfuse.fusion import build_fusion, masked_mean
from gpfuse.models.heads import regression_head
from gpfuse.models.io import PretrainedMixin
from gpfuse.models.outputs import RegressionOutput

__all__ = ["GRF", "UnimodalRegressor"]

log = logging.getLogger(__name__)


def _check_inputs(input_dims: dict[str, int], names: Sequence[str]) -> None:
    missing = [m for m in names if m not in input_dims]
    if missing:
        raise ValueError(f"modalities {missing} have no input size; the data provides {sorted(input_dims)}")


class GRF(PretrainedMixin, nn.Module):
    """Gated Recursive Fusion over any number of modalities.

    Args:
        input_dims: feature size of each modality, e.g. ``{"text": 384, "audio": 73}``.
        order: fusion order (an ablation in the paper); default: the order of ``input_dims``
            (text -> audio -> vision for the sentiment data).
        d_model, num_heads, num_layers, ffn_dim, dropout: public defaults 64, 4, 4, 256, 0.2;
            ``num_layers`` decoder layers per direction in each block.
        gate: the binary fusion closing each block (``"gfu"``; ``"fixed_gate"``, ``"sum"``,
            ``"concat"`` for ablations).
        aux_head: add the auxiliary regressor on the first fused state; only built with 3 or more modalities
            (with 2 the first fused state is the final state, see the module docstring).

    Input: ``batch[m]`` (B, L_m, input_dims[m]) and ``batch[f"{m}_mask"]`` (B, L_m) bool for each ``m``
    in ``order`` (an absent modality is skipped). Output: :class:`RegressionOutput` with ``score`` (B,).
    """

    def __init__(
        self,
        input_dims: dict[str, int],
        order: Sequence[str] | None = None,
        d_model: int = 64,
        num_heads: int = 4,
        num_layers: int = 4,
        ffn_dim: int = 256,
        dropout: float = 0.2,
        gate: str = "gfu",
        aux_head: bool = True,
        max_len: int = 512,
    ) -> None:
        super().__init__()
        self.order = list(order or input_dims)
        _check_inputs(input_dims, self.order)
        self.projections = nn.ModuleDict(
            {m: SequenceProjection(input_dims[m], d_model, max_len, dropout) for m in self.order}
        )
        self.fusion = build_fusion(
            "recursive",
            order=self.order,
            block=dict(
                name="grf_block",
                dim=d_model,
                num_heads=num_heads,
                num_layers=num_layers,
                ffn_dim=ffn_dim,
                dropout=dropout,
                gate=gate,
            ),
        )
        self.head = regression_head(d_model, dropout)
        self.aux_head = regression_head(d_model, dropout) if aux_head and len(self.order) > 2 else None
        if aux_head and self.aux_head is None:
            log.info("GRF: no auxiliary head with 2 modalities (the first fused state is the final one)")

    @property
    def retired_modules(self) -> tuple[str, ...]:
        """Saved two-modality GRFs (before the head was dropped for n = 2) hold auxiliary-head weights; ignore them."""
        return ("aux_head",) if self.aux_head is None else ()

    def forward(self, batch: dict[str, Tensor]) -> RegressionOutput:
        inputs = {m: self.projections[m](batch[m]) for m in self.order if m in batch}
        masks = {m: batch[f"{m}_mask"] for m in inputs if f"{m}_mask" in batch}
        fused = self.fusion(inputs, masks)
        score = self.head(fused.state).squeeze(-1)
        intermediate = len(fused.states) > 1  # a first fused state that is not the final one
        aux = self.aux_head(fused.states[0]).squeeze(-1) if self.aux_head is not None and intermediate else None
        return RegressionOutput(score, aux, fused.gates)


class UnimodalRegressor(PretrainedMixin, nn.Module):
    """Unimodal baseline with GRF's parts: projection + positions, a Transformer encoder of
    ``num_layers`` layers, masked mean pooling, the same regression head.

    Input: ``batch[modality]`` (B, L, D) and ``batch[f"{modality}_mask"]`` (B, L). Output: ``score`` (B,).
    """

    def __init__(
        self,
        input_dims: dict[str, int],
        modality: str = "text",
        d_model: int = 64,
        num_heads: int = 4,
        num_layers: int = 4,
        ffn_dim: int = 256,
        dropout: float = 0.2,
        max_len: int = 512,
    ) -> None:
        super().__init__()
        _check_inputs(input_dims, [modality])
        self.modality = modality
        self.projection = SequenceProjection(input_dims[modality], d_model, max_len, dropout)
        layer = nn.TransformerEncoderLayer(d_model, num_heads, ffn_dim, dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.head = regression_head(d_model, dropout)

    def forward(self, batch: dict[str, Tensor]) -> RegressionOutput:
        if self.modality not in batch:
            raise KeyError(f"{self.modality} missing in input")
        mask = batch.get(f"{self.modality}_mask")
        x = self.encoder(self.projection(batch[self.modality]), src_key_padding_mask=None if mask is None else ~mask)
        return RegressionOutput(self.head(masked_mean(x, mask)).squeeze(-1))
