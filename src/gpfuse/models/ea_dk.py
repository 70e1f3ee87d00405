"""EA-DK: Encoder Attention and Dynamic Kernel update for polyp segmentation (arXiv 2509.23502, Fig. 1).

Top to bottom: an image encoder with five stages (Res2Net-50 in the paper; any gpfuse image encoder) ->
Unified Channel Adaptation (UCA: 1x1 conv to 32 channels, BN, ReLU) of every stage -> Encoder Attention
(EA, ``fusion/encoder_attention.py``): self-attention over the five pooled stage tokens, averaged into a
global context G -> Dynamic Kernel (DK): an MLP turns G into a 1x1 segmentation kernel, whose first
prediction reads the deepest features ->
four decoder stages, deep to shallow: upsample, fuse with the stage's UCA skip, pool the features under
the previous prediction into a region descriptor, update the kernel with LDNet's gated updater
(``fusion/kernel.py``), predict again. Every stage's prediction is returned for deep supervision.

Where the paper is silent, gpfuse chooses (following LDNet, the design EA-DK builds on): EA is one pre-LN
Transformer layer (4 heads, FFN 2x) with a learned embedding per stage; the DK MLP is C -> 2C -> C + 1
(kernel weights and a bias; the bias is kept through the updates, whose ReLU'd kernels LDNet uses without
one); a decoder stage is two 3x3 conv-BN-ReLU blocks on [upsampled; skip] and a plain 1x1 conv giving the
signed features the kernel reads (LDNet's "unify"); the region descriptor is the feature mean weighted by
the sigmoid of the upsampled previous prediction (K-Net's normalised form; LDNet sums).

A departure for speed, a config choice (``decoder_stride``, default 2 as in the paper): the decoder may stop at
stride 4, its last prediction then upsampled 4x bilinearly. At 352 x 352 the stride-2 decoder stage is the
model's most expensive module (two 3x3 convolutions on 176 x 176 maps; ``benchmarks/ea_dk_profile.py``). Encoder
attention still reads every encoder stage, and every remaining mechanism is unchanged.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from gpfuse.encoders.image import get_image_encoder
from gpfuse.fusion import build_fusion
from gpfuse.fusion.layers import mlp
from gpfuse.models.io import PretrainedMixin
from gpfuse.models.outputs import SegmentationOutput

__all__ = ["EADK"]


def _conv_bn_relu(cin: int, cout: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class DecoderStage(nn.Module):
    """Upsample the deeper decoder features to the skip's size, concatenate the UCA skip, two 3x3 conv-BN-ReLU
    blocks; a plain 1x1 conv then gives the signed features (B, C, h, w) the kernel reads."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fuse = nn.Sequential(_conv_bn_relu(2 * dim, dim, 3), _conv_bn_relu(dim, dim, 3))
        self.unify = nn.Conv2d(dim, dim, 1)

    def forward(self, deeper: Tensor, skip: Tensor) -> tuple[Tensor, Tensor]:
        deeper = F.interpolate(deeper, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        features = self.fuse(torch.cat([deeper, skip], dim=1))
        return features, self.unify(features)


def apply_kernel(features: Tensor, kernel: Tensor, bias: Tensor) -> Tensor:
    """A per-sample 1x1 kernel: (B, C, h, w), (B, C), (B,) -> logits (B, 1, h, w)."""
    return torch.einsum("bchw,bc->bhw", features, kernel).unsqueeze(1) + bias.view(-1, 1, 1, 1)


def region_descriptor(features: Tensor, logits: Tensor) -> Tensor:
    """Features (B, C, h, w) averaged under sigmoid(previous logits, resized to h x w) -> (B, C)."""
    weight = torch.sigmoid(F.interpolate(logits, size=features.shape[-2:], mode="bilinear", align_corners=False))
    return (features * weight).sum(dim=(-2, -1)) / weight.sum(dim=(-2, -1)).clamp_min(1e-6)


class EADK(PretrainedMixin, nn.Module):
    """EA-DK.

    Args:
        encoder: image encoder name (``"efficientnet_lite0"`` offline default with ImageNet weights,
            ``"res2net50_v1b_26w_4s"`` the paper's, ``"resnet50"``). encoder_weights: ``"imagenet"`` (shipped
            weights where they exist), a local weights file, or None (random init, logged).
        channels: UCA width C (32 in the paper). attention_heads: EA heads. in_channels: image channels.
        decoder_stride: stride of the last decoder stage: 2 (the paper's, the shallowest encoder stage) or 4, 8,
            16 (fewer decoder stages and kernel updates; cheaper, coarser).

    Input: ``batch["image"]`` (B, in_channels, H, W), any H, W. Output: :class:`SegmentationOutput` with
    ``logits`` (B, 1, H, W) and ``stages`` deep to shallow (strides 32, 16, 8, 4, 2 down to ``decoder_stride``).
    """

    # older saved models load (io.py): the MLPs gained a Dropout slot when they became fusion.layers.mlp
    renamed_modules: ClassVar[dict[str, str]] = {
        "encoder_attention.ffn.2": "encoder_attention.ffn.3",
        "dynamic_kernel.2": "dynamic_kernel.3",
    }

    def __init__(
        self,
        encoder: str = "efficientnet_lite0",
        encoder_weights: str | None = "imagenet",
        channels: int = 32,
        attention_heads: int = 4,
        in_channels: int = 3,
        decoder_stride: int = 2,
    ) -> None:
        super().__init__()
        if decoder_stride not in (2, 4, 8, 16):
            raise ValueError(f"decoder_stride must be 2, 4, 8 or 16 (an encoder stage's stride), got {decoder_stride}")
        self.encoder = get_image_encoder(encoder, weights=encoder_weights, in_channels=in_channels)
        self.encoder.drop_head()
        self.uca = nn.ModuleList([_conv_bn_relu(c, channels, 1) for c in self.encoder.out_channels[1:]])
        self.encoder_attention = build_fusion(
            "encoder_attention", dim=channels, num_stages=len(self.uca), num_heads=attention_heads
        )
        self.dynamic_kernel = mlp(channels, 2 * channels, channels + 1, activation=nn.ReLU)
        self.deepest = _conv_bn_relu(channels, channels, 3)
        self.deepest_unify = nn.Conv2d(channels, channels, 1)
        unreached = self.stage_strides.index(decoder_stride)  # shallow stages below decoder_stride: no decoder
        self.decoder = nn.ModuleList([DecoderStage(channels) for _ in range(len(self.uca) - 1 - unreached)])
        self.kernel_updates = nn.ModuleList([build_fusion("kernel_update", dim=channels) for _ in self.decoder])

    @property
    def stage_strides(self) -> tuple[int, ...]:
        """Strides of the encoder stages UCA adapts, shallow to deep: (2, 4, 8, 16, 32)."""
        return tuple(2 ** (i + 1) for i in range(len(self.uca)))

    @property
    def decoder_strides(self) -> tuple[int, ...]:
        """Output stride of each decoder stage, deep to shallow: (16, 8, 4, 2) in the paper."""
        return self.stage_strides[-2::-1][: len(self.decoder)]

    def forward(self, batch: dict[str, Tensor]) -> SegmentationOutput:
        image = batch["image"]
        stages = [uca(f) for uca, f in zip(self.uca, self.encoder(image)[1:])]  # strides 2 .. 32
        context, attention = self.encoder_attention(stages)
        kernel, bias = self.dynamic_kernel(context).split([stages[0].shape[1], 1], dim=-1)
        features = self.deepest(stages[-1])
        logits = [apply_kernel(self.deepest_unify(features), kernel, bias)]
        gates = []
        for stage, update, skip in zip(self.decoder, self.kernel_updates, reversed(stages[:-1])):
            features, unified = stage(features, skip)
            kernel, gate = update(kernel, region_descriptor(unified, logits[-1]), return_gate=True)
            logits.append(apply_kernel(unified, kernel, bias))
            gates.append(gate)
        full = F.interpolate(logits[-1], size=image.shape[-2:], mode="bilinear", align_corners=False)
        return SegmentationOutput(full, logits, gates, attention)
