"""Small building blocks the fusion layers and model heads share: a two-layer MLP and a Transformer-decoder
stack (self-attention, cross-attention to a memory, feed-forward per layer)."""

from __future__ import annotations

from torch import nn

__all__ = ["decoder_stack", "mlp"]


def mlp(
    in_dim: int,
    hidden: int,
    out_dim: int | None = None,
    activation: type[nn.Module] = nn.GELU,
    dropout: float = 0.0,
    out_dropout: bool = False,
) -> nn.Sequential:
    """``Linear(in_dim, hidden) -> activation -> Dropout -> Linear(hidden, out_dim)`` and, with ``out_dropout``,
    a last Dropout (the Transformer feed-forward). ``out_dim`` defaults to ``in_dim``.

    Shapes: (..., in_dim) -> (..., out_dim).
    """
    layers = [nn.Linear(in_dim, hidden), activation(), nn.Dropout(dropout), nn.Linear(hidden, out_dim or in_dim)]
    if out_dropout:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def decoder_stack(dim: int, num_heads: int, num_layers: int, ffn_dim: int, dropout: float) -> nn.TransformerDecoder:
    """``num_layers`` post-LN ``nn.TransformerDecoderLayer``s (batch first): the target reads the memory.

    Shapes: target (B, Lt, D), memory (B, Lm, D) -> (B, Lt, D).
    """
    layer = nn.TransformerDecoderLayer(dim, num_heads, ffn_dim, dropout, batch_first=True)
    return nn.TransformerDecoder(layer, num_layers)
