"""GPF-Net: gated progressive fusion for polyp re-identification (arXiv 2512.21476, Fig. 2).

Top to bottom: the image encoder (ResNet-50 in the paper) is pooled and squeezed by a bottleneck
(Linear 2048->512, BatchNorm1d, Dropout 0.5) into one image token ``I``; the report's token states from a
(frozen by default) text encoder are projected to 512-d tokens ``T``; ``x0 = PE([I; T])``; 4 gated
progressive fusion layers (gate from the image token, self-attention, FFN; attention+FFN shared across
layers by default, as the official code); a second-stage Transformer encoder (4 layers, 4 heads, FFN
1024); the fused embedding is token 0; an ID classifier on top for the identity loss.

Unlike the public code: the second-stage encoder sees (B, 1 + L, 512) so no sample reads another
(eval embeddings are batch independent), every LayerNorm is a registered module, text is padded with the
tokenizer's real pad id and masked. A missing report (no text in the batch, or an all-False text mask
for a sample) runs image-only: the sequence is the image token alone for that sample.
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from gpfuse.encoders import SinusoidalPositionalEncoding, TextEncoder
from gpfuse.encoders.backbone import freeze_batchnorm, global_pool
from gpfuse.encoders.image import get_image_encoder
from gpfuse.fusion import build_fusion
from gpfuse.models.io import PretrainedMixin

__all__ = ["GPFNet", "GPFNetOutput"]


class GPFNetOutput(NamedTuple):
    """embedding: (B, dim) fused token 0; logits: (B, num_classes); gates: per fusion layer (B, 1, dim);
    image: (B, dim) the bottleneck image token (reused by the ``query`` text protocol)."""

    embedding: Tensor
    logits: Tensor
    gates: list[Tensor]
    image: Tensor


class GPFNet(PretrainedMixin, nn.Module):
    """GPF-Net.

    Args:
        num_classes: training identities (ID classifier size).
        image_encoder: ``"resnet50"`` (paper) or ``"efficientnet_lite0"``. image_weights: a local weights
            file, ``"imagenet"`` (EfficientNet-Lite0's shipped weights) or None (random init, logged).
        text_model: ``"minilm"`` (offline default), a local Hugging Face folder (ALBERT-base is the
            paper's), or None for an image-only model. train_text: fine-tune the text encoder.
        train_image: fine-tune the image encoder (paper); False freezes it, BatchNorm statistics included
            (a cheaper linear-probe-like setting for CPU budgets).
        freeze_image_bn: fine-tune the image encoder's weights but keep its BatchNorm layers in eval mode
            (ImageNet running statistics, as detection fine-tuning does with small batches): on CUHK01, P x K
            batches of padded crops drag the statistics away and every epoch lowers validation mAP.
        dim: fusion width (512). num_fusion_layers / fusion_heads / fusion_ffn: 4 / 8 / 2048.
        share_layers: share attention + FFN across fusion layers (official code: true).
        final_layers / final_heads / final_ffn: second-stage encoder, 4 / 4 / 1024.
        bottleneck_dropout: 0.5. dropout: attention/FFN dropout. max_text_len: report tokens kept.
        norm_first: pre-LN fusion layers and second-stage encoder (with a final LayerNorm) instead of the
            paper's post-LN; gpfuse's option for training at higher rates (see ``fusion/image_gated_layer.py``).

    Input: ``batch["image"]`` (B, 3, H, W); optionally ``batch["text_ids"]`` (B, L) and
    ``batch["text_mask"]`` (B, L) bool. Output: :class:`GPFNetOutput`.
    """

    renamed_modules: ClassVar[dict[str, str]] = {"encoder": "second_stage"}  # older saved models load (io.py)

    def __init__(
        self,
        num_classes: int,
        image_encoder: str = "resnet50",
        image_weights: str | None = None,
        train_image: bool = True,
        text_model: str | None = "minilm",
        train_text: bool = False,
        dim: int = 512,
        num_fusion_layers: int = 4,
        fusion_heads: int = 8,
        fusion_ffn: int = 2048,
        share_layers: bool = True,
        final_layers: int = 4,
        final_heads: int = 4,
        final_ffn: int = 1024,
        bottleneck_dropout: float = 0.5,
        dropout: float = 0.1,
        max_text_len: int = 64,
        norm_first: bool = False,
        freeze_image_bn: bool = False,
    ) -> None:
        super().__init__()
        self.image_encoder = get_image_encoder(image_encoder, weights=image_weights)
        self.image_encoder.drop_head()  # the ImageNet classifier is never used: keep every parameter trained
        self.train_image, self.freeze_image_bn = train_image, freeze_image_bn
        self.image_encoder.requires_grad_(train_image)
        self.bottleneck = nn.Sequential(
            nn.Linear(self.image_encoder.feature_dim, dim), nn.BatchNorm1d(dim), nn.Dropout(bottleneck_dropout)
        )
        self.text_encoder = TextEncoder(text_model, trainable=train_text) if text_model else None
        self.text_proj = nn.Linear(self.text_encoder.hidden_size, dim) if self.text_encoder else None
        self.pos = SinusoidalPositionalEncoding(dim, 1 + max_text_len)
        self.fusion = build_fusion(
            "gpf_progressive",
            dim=dim,
            num_layers=num_fusion_layers,
            num_heads=fusion_heads,
            ffn_dim=fusion_ffn,
            dropout=dropout,
            share_layers=share_layers,
            norm_first=norm_first,
        )
        layer = nn.TransformerEncoderLayer(
            dim, final_heads, final_ffn, dropout, batch_first=True, norm_first=norm_first
        )
        self.second_stage = nn.TransformerEncoder(
            layer, final_layers, norm=nn.LayerNorm(dim) if norm_first else None, enable_nested_tensor=False
        )
        self.classifier = nn.Linear(dim, num_classes)
        self.train()  # Lightning never calls .train(): apply the frozen parts' eval modes now

    def train(self, mode: bool = True) -> GPFNet:
        super().train(mode)
        if not self.train_image:
            self.image_encoder.eval()
        elif self.freeze_image_bn:
            freeze_batchnorm(self.image_encoder)
        return self

    def image_tokens(self, image: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, dim): pooled encoder features through the bottleneck."""
        return self.bottleneck(global_pool(self.image_encoder(image)))

    def text_tokens(self, ids: Tensor, mask: Tensor) -> Tensor:
        """(B, L) ids and mask -> (B, L, dim) projected report tokens."""
        if self.text_encoder is None or self.text_proj is None:  # both or neither (text_model)
            raise ValueError("this GPF-Net was built image-only (text_model=None)")
        return self.text_proj(self.text_encoder(ids, mask))

    def fuse(
        self, image: Tensor, text: Tensor | None = None, text_mask: Tensor | None = None
    ) -> tuple[Tensor, list[Tensor]]:
        """Image tokens (B, dim) and optional text tokens (B, L, dim) -> embedding (B, dim) and gates."""
        x = image.unsqueeze(1)
        mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        if text is not None:
            if text_mask is None:
                raise ValueError("fuse: text tokens need their text_mask")
            x = torch.cat([x, text], dim=1)
            mask = torch.cat([mask, text_mask.bool()], dim=1)
        x, gates = self.fusion(self.pos(x), mask=mask, return_gate=True)
        x = self.second_stage(x, src_key_padding_mask=~mask)
        return x[:, 0], gates

    def forward(self, batch: dict[str, Tensor]) -> GPFNetOutput:
        image = self.image_tokens(batch["image"])
        text = mask = None
        if self.text_encoder is not None and "text_ids" in batch:
            mask = batch["text_mask"]
            text = self.text_tokens(batch["text_ids"], mask)
        embedding, gates = self.fuse(image, text, mask)
        return GPFNetOutput(embedding, self.classifier(embedding), gates, image)
