"""How fusion steps are stacked: progressive (layer after layer) and recursive (modality after modality)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from gpfuse.fusion.attention import SymmetricCrossAttention
from gpfuse.fusion.layers import decoder_stack
from gpfuse.fusion.pooling import key_padding_mask, masked_mean

__all__ = ["AllPairsCrossAttention", "GRFBlock", "ProgressiveFusion", "RecursiveFusion", "RecursiveFusionOutput"]


class ProgressiveFusion(nn.Module):
    """The same fusion applied ``num_layers`` times to a running state: ``x_{l+1} = fuse_l(x_l, *context)``
    (GPF-Net's progressive fusion; PGF-Net interleaves the steps with encoder layers through :meth:`step`).

    Args:
        block_factory: builds one fusion block ``fuse(x, *context, return_gate=..., **kwargs)``: a binary
            gate (``context`` = the other modality) or a layer over a joint sequence (``context`` empty).
        num_layers: number of steps.
        share_weights: one block reused at every step instead of one block per step.

    Shapes: ``x`` (B, *, D) and context (B, *, D) -> (B, *, D); with ``return_gate`` also the per-step gates.
    """

    def __init__(self, block_factory: Callable[[], nn.Module], num_layers: int, share_weights: bool = False) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.num_layers = num_layers
        self.share_weights = share_weights
        self.blocks = nn.ModuleList([block_factory() for _ in range(1 if share_weights else num_layers)])

    def step(self, index: int, x: Tensor, *context: Tensor, **kwargs):
        """Apply fusion step ``index`` (0-based) alone; returns ``(fused, gate)``."""
        block = self.blocks[0 if self.share_weights else index]
        return block(x, *context, return_gate=True, **kwargs)

    def forward(self, x: Tensor, *context: Tensor, return_gate: bool = False, **kwargs):
        gates = []
        for index in range(self.num_layers):
            x, gate = self.step(index, x, *context, **kwargs)
            gates.append(gate)
        return (x, gates) if return_gate else x


class GRFBlock(nn.Module):
    """One GRF fusion block (Sec. 3.2-3.3): symmetric cross-attention between the state and the incoming
    modality, masked mean pooling of both, then a gate (the Gated Fusion Unit by default) that writes the
    new state.

    Args:
        cross: the symmetric cross-attention (two decoder stacks).
        gate: a binary fusion ``gate(state, incoming, return_gate=True)`` on pooled (B, D) vectors.

    Shapes: ``state`` (B, Ls, D) with ``state_mask`` (B, Ls), ``x`` (B, Lx, D) with ``x_mask`` (B, Lx)
    -> new state (B, D) and the gate (B, D) (None for an ungated fusion).
    """

    def __init__(self, cross: SymmetricCrossAttention, gate: nn.Module) -> None:
        super().__init__()
        self.cross = cross
        self.gate = gate

    def forward(
        self, state: Tensor, x: Tensor, state_mask: Tensor | None = None, x_mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        state, x = self.cross(state, x, state_mask, x_mask)
        return self.gate(masked_mean(state, state_mask), masked_mean(x, x_mask), return_gate=True)


class RecursiveFusionOutput(NamedTuple):
    """state: (B, D) final fused state; states: the state after each applied step, first to last;
    gates: the gate of each applied step (B, D), None for ungated fusions; applied: modality fused at each step."""

    state: Tensor
    states: list[Tensor]
    gates: list[Tensor | None]
    applied: list[str]


class RecursiveFusion(nn.Module):
    """GRF's recursion (Sec. 3.1): the state starts as the first modality, then each next modality ``m``
    in ``order`` is folded in, ``s <- Block_m(s, x_m)``. ``n`` modalities use ``n - 1`` blocks, so
    parameters and compute grow linearly with ``n``.

    A modality absent from ``inputs`` is skipped (its block is not applied); the first present modality
    in ``order`` starts the state. After the first step the state is one pooled token.

    Args:
        order: modality names in fusion order, e.g. ``["text", "audio", "vision"]``.
        block_factory: builds one :class:`GRFBlock`-like module ``block(state, x, state_mask, x_mask)``.

    Shapes: ``inputs[m]`` (B, L_m, D), ``masks[m]`` (B, L_m) bool -> :class:`RecursiveFusionOutput`.
    """

    def __init__(self, order: Sequence[str], block_factory: Callable[[], nn.Module]) -> None:
        super().__init__()
        if len(order) < 2 or len(set(order)) != len(order):
            raise ValueError(f"order must name at least 2 distinct modalities, got {list(order)}")
        self.order = list(order)
        self.blocks = nn.ModuleDict({m: block_factory() for m in self.order[1:]})

    def forward(self, inputs: dict[str, Tensor], masks: dict[str, Tensor] | None = None) -> RecursiveFusionOutput:
        masks = masks or {}
        unknown = set(inputs) - set(self.order)
        if unknown:
            raise KeyError(f"unknown modalities {sorted(unknown)}; this fusion knows {self.order}")
        present = [m for m in self.order if m in inputs]
        if not present:
            raise KeyError(f"none of the modalities {self.order} is in the input")
        first = present[0]
        state, state_mask = inputs[first], masks.get(first)
        states, gates = [], []
        for m in present[1:]:
            pooled, gate = self.blocks[m](state, inputs[m], state_mask, masks.get(m))
            states.append(pooled)
            gates.append(gate)
            state, state_mask = pooled.unsqueeze(1), None
        final = states[-1] if states else masked_mean(state, state_mask)
        return RecursiveFusionOutput(final, states, gates, present[1:])


class AllPairsCrossAttention(nn.Module):
    """MulT-style baseline (Tsai et al. 2019): one cross-modal Transformer-decoder stack for every ordered
    pair (target reads source), so ``n (n - 1)`` stacks: parameters and compute grow quadratically in
    ``n``. Each target's outputs are masked-mean pooled and concatenated, then projected back to ``dim``.

    Shapes: ``inputs[m]`` (B, L_m, D), ``masks[m]`` (B, L_m) -> (B, D).
    """

    def __init__(
        self,
        order: Sequence[str],
        dim: int,
        num_heads: int = 4,
        num_layers: int = 4,
        ffn_dim: int = 256,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if len(order) < 2 or len(set(order)) != len(order):
            raise ValueError(f"order must name at least 2 distinct modalities, got {list(order)}")
        self.order = list(order)

        self.pairs = nn.ModuleDict(
            {
                f"{t}<-{s}": decoder_stack(dim, num_heads, num_layers, ffn_dim, dropout)
                for t in self.order
                for s in self.order
                if s != t
            }
        )
        self.proj = nn.Linear(len(self.pairs) * dim, dim)

    def forward(self, inputs: dict[str, Tensor], masks: dict[str, Tensor] | None = None) -> Tensor:
        masks = masks or {}
        pooled = []
        for key, stack in self.pairs.items():
            t, s = key.split("<-")
            pad_t, pad_s = key_padding_mask(masks.get(t)), key_padding_mask(masks.get(s))
            out = stack(inputs[t], inputs[s], tgt_key_padding_mask=pad_t, memory_key_padding_mask=pad_s)
            pooled.append(masked_mean(out, masks.get(t)))
        return self.proj(torch.cat(pooled, dim=-1))
