"""The fusion core: every gate, attention and stack of the five systems, built by name.

>>> fuse = build_fusion("gfu", dim=64)
>>> grf = build_fusion("recursive", order=["text", "audio"],
...                    block={"name": "grf_block", "dim": 64, "num_layers": 1})
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from gpfuse.fusion.attention import CrossAttention, SymmetricCrossAttention, TwoWayAttention
from gpfuse.fusion.baselines import ConcatFusion, FixedGateFusion, SumFusion
from gpfuse.fusion.bifusion import BiFusionBlock
from gpfuse.fusion.encoder_attention import EncoderAttention
from gpfuse.fusion.gates import GatedArbitration, GatedFusionUnit, ImageConditionedGate
from gpfuse.fusion.image_gated_layer import GatedProgressiveLayer, gated_progressive_stack
from gpfuse.fusion.in_lm_step import BottleneckAdapter, GatedCrossModalBlock
from gpfuse.fusion.kernel import GatedKernelUpdate
from gpfuse.fusion.pooling import masked_mean
from gpfuse.fusion.stacks import (
    AllPairsCrossAttention,
    GRFBlock,
    ProgressiveFusion,
    RecursiveFusion,
    RecursiveFusionOutput,
)

__all__ = [
    "BINARY_FUSIONS",
    "FUSIONS",
    "AllPairsCrossAttention",
    "BiFusionBlock",
    "BottleneckAdapter",
    "ConcatFusion",
    "CrossAttention",
    "EncoderAttention",
    "FixedGateFusion",
    "GRFBlock",
    "GatedArbitration",
    "GatedCrossModalBlock",
    "GatedFusionUnit",
    "GatedKernelUpdate",
    "GatedProgressiveLayer",
    "ImageConditionedGate",
    "ProgressiveFusion",
    "RecursiveFusion",
    "RecursiveFusionOutput",
    "SumFusion",
    "SymmetricCrossAttention",
    "TwoWayAttention",
    "build_fusion",
    "gated_progressive_stack",
    "masked_mean",
]

#: Interchangeable two-input fusions ``fuse(a, b, return_gate=False)``, all built from ``dim``.
BINARY_FUSIONS: dict[str, type[nn.Module]] = {
    "concat": ConcatFusion,
    "sum": SumFusion,
    "fixed_gate": FixedGateFusion,
    "image_gate": ImageConditionedGate,
    "gfu": GatedFusionUnit,
    "arbitration": GatedArbitration,
}


def _grf_block(
    dim: int, num_heads: int = 4, num_layers: int = 4, ffn_dim: int = 256, dropout: float = 0.1, gate: str = "gfu"
) -> GRFBlock:
    gate_options = {"dropout": dropout} if gate == "gfu" else {}
    return GRFBlock(
        SymmetricCrossAttention(dim, num_heads, num_layers, ffn_dim, dropout),
        build_fusion(gate, dim=dim, **gate_options),
    )


def _block_factory(spec: dict[str, Any]) -> Callable[[], nn.Module]:
    if not isinstance(spec, dict) or "name" not in spec:
        raise ValueError(f"a stack's 'block' must be a mapping with a 'name', got {spec!r}")
    options = dict(spec)
    name = options.pop("name")
    return lambda: build_fusion(name, **options)


def _progressive(block: dict[str, Any], num_layers: int, share_weights: bool = False) -> ProgressiveFusion:
    return ProgressiveFusion(_block_factory(block), num_layers, share_weights)


def _recursive(order: list[str], block: dict[str, Any]) -> RecursiveFusion:
    return RecursiveFusion(order, _block_factory(block))


FUSIONS: dict[str, Callable[..., nn.Module]] = {
    **BINARY_FUSIONS,
    "cross_attention": CrossAttention,
    "symmetric_cross_attention": SymmetricCrossAttention,
    "two_way_attention": TwoWayAttention,
    "grf_block": _grf_block,
    "progressive": _progressive,
    "recursive": _recursive,
    "all_pairs": AllPairsCrossAttention,
    "gpf_layer": GatedProgressiveLayer,
    "gpf_progressive": gated_progressive_stack,
    "kernel_update": GatedKernelUpdate,
    "encoder_attention": EncoderAttention,
    "pgf_block": GatedCrossModalBlock,
    "bifusion": BiFusionBlock,
}


def build_fusion(name: str, **options: Any) -> nn.Module:
    """Build the fusion ``name`` with ``options`` (the constructor's keyword arguments).

    Stacks take their block as a nested spec: ``build_fusion("progressive", num_layers=3,
    block={"name": "image_gate", "dim": 256})``.
    """
    try:
        factory = FUSIONS[name]
    except KeyError:
        raise KeyError(f"unknown fusion {name!r}; choose one of {sorted(FUSIONS)}") from None
    try:
        return factory(**options)
    except TypeError as err:
        raise TypeError(f"bad options for fusion {name!r}: {err}") from err
