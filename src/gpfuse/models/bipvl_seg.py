"""BiPVL-Seg: bidirectional progressive vision-language fusion for 3D segmentation (arXiv 2503.23534, Fig. 2).

Top to bottom: MONAI's ``SwinUNETR`` is the vision network, used through its own modules: the patch
embedding and the four Swin stages of its ``swinViT``, then its UNETR encoder/decoder blocks and output
head. The class descriptions (a global prompt and five concept prompts per class) run through a
BERT-family encoder cut into five stages. After Swin stage ``s`` (s = 1..4) a BiFusion block
(``fusion/bifusion.py``) exchanges information between the stage's volume features and the [CLS] states of
the prompts after text stage ``s``: the fused volume features feed the next Swin stage (after stage 4, the
decoder's bottleneck), the fused [CLS] states go back into the text sequence for the next text stage; the
decoder's skips use the pre-fusion features, as in the paper. With ``alignment``, a class-embedding head
maps every fused bottleneck token to class logits (trained against the argmax of the downsampled
segmentation logits), class prototypes pooled with those probabilities are projected for the global (class)
and local (concept) InfoNCE losses.

Departure from the paper, stated: its local term aligns concepts "with visual regions" without saying which
regions or how they are pooled; here both terms read the class prototype (the bottleneck tokens averaged with
the class head's soft assignment: the region the model gives the class, pooled to one vector). The global
term is weighted by concept-to-vision similarity as the paper says, in a form gpfuse chose
(``losses/alignment.py``); ``train.global_alignment: uniform`` and ``train.local_alignment: false`` ablate.

Unlike the public code: every module is registered (an ``nn.ModuleList``), projections are sized from the
stage widths, so any patch size divisible by 32 works, and hard negatives are the most similar ones
(``losses/alignment.py``). Ablations: ``text=False`` is plain SwinUNETR (no text, no fusion);
``alignment=False`` fuses without the class-embedding head and the alignment losses.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from gpfuse.encoders.staged_text import StagedTextEncoder
from gpfuse.encoders.text import tokenize
from gpfuse.fusion import build_fusion
from gpfuse.fusion.layers import mlp
from gpfuse.models.io import PretrainedMixin
from gpfuse.models.mixed_precision import cpu_conv3d_in_fp32, instance_norms_in_fp32

__all__ = ["BiPVLSeg", "BiPVLSegOutput"]

log = logging.getLogger(__name__)


class BiPVLSegOutput(NamedTuple):
    """logits: (B, C, X, Y, Z). With alignment (else None): class_logits (B, N, C) per fused bottleneck token;
    vision_classes (B, C, A) class prototypes; text_classes (B, C, A) global prompts; text_concepts (B, C, K, A)
    concept prompts, all projected to the alignment width A."""

    logits: Tensor
    class_logits: Tensor | None = None
    vision_classes: Tensor | None = None
    text_classes: Tensor | None = None
    text_concepts: Tensor | None = None


class BiPVLSeg(PretrainedMixin, nn.Module):
    """BiPVL-Seg.

    Args:
        num_classes: label classes C, background included.
        class_texts: per class, its global prompt then its concept prompts (from the class-description CSV);
            needed unless ``text=False``.
        in_channels, feature_size (48), use_v2: MONAI ``SwinUNETR`` options. depths: Swin blocks per stage
            ((2, 2, 2, 2), Swin-T's and the paper's; the second block of a stage is the shifted-window one).
        text: False gives the vision-only model (plain SwinUNETR). alignment: class-embedding head + the
            outputs the alignment losses need.
        text_model: ``"minilm"`` (offline default) or a local BERT-family folder (PubMedBERT / ClinicalBERT are
            the paper's). text_stages: stage boundaries for a 12-layer model, scaled to ``text_model``'s depth.
        train_text: fine-tune the text encoder. max_text_len: tokens per prompt.
        fusion_depth / fusion_heads / fusion_mlp / attention_downsample: BiFusion's two-way transformer
            (2 / 8 / 2048 / 2). align_dim: width of the alignment embeddings.

    Input: ``batch["image"]`` (B, in_channels, X, Y, Z), each side divisible by 32.
    Output: :class:`BiPVLSegOutput`.
    """

    text_encoder: StagedTextEncoder | None
    bifusion: nn.ModuleList | None
    prompt_ids: Tensor
    prompt_mask: Tensor
    renamed_modules: ClassVar[dict[str, str]] = {
        "text": "text_encoder",
        "class_head.2": "class_head.3",
    }  # older saved models load (io.py)

    def __init__(
        self,
        num_classes: int,
        class_texts: Sequence[Sequence[str]] | None = None,
        in_channels: int = 1,
        feature_size: int = 48,
        use_v2: bool = False,
        depths: Sequence[int] = (2, 2, 2, 2),
        text: bool = True,
        alignment: bool = True,
        text_model: str = "minilm",
        text_stages: Sequence[int] = (1, 6, 8, 10, 12),
        train_text: bool = True,
        max_text_len: int = 64,
        fusion_depth: int = 2,
        fusion_heads: int = 8,
        fusion_mlp: int = 2048,
        attention_downsample: int = 2,
        align_dim: int = 128,
    ) -> None:
        super().__init__()
        from monai.networks.nets import SwinUNETR

        if alignment and not text:
            raise ValueError("alignment needs the text branch: set text=True, or alignment=False for vision-only")
        self.vision = SwinUNETR(
            in_channels=in_channels,
            out_channels=num_classes,
            feature_size=feature_size,
            depths=tuple(depths),
            use_v2=use_v2,
        )
        instance_norms_in_fp32(self.vision)  # bf16 instance norms of tiny blocks are wrong
        cpu_conv3d_in_fp32(self.vision)  # bf16 Conv3d backward on CPU gave NaN gradients (mixed_precision.py)
        widths = [feature_size * 2 ** (s + 1) for s in range(4)]  # Swin stage outputs: 2C, 4C, 8C, 16C
        self.text_encoder = self.bifusion = None
        text_width = 0
        if text:
            if not class_texts or len(class_texts) != num_classes:
                raise ValueError(
                    f"class_texts must hold one list of prompts per class ({num_classes}), got "
                    f"{0 if not class_texts else len(class_texts)}"
                )
            if len({len(t) for t in class_texts}) != 1 or len(class_texts[0]) < 2:
                raise ValueError("every class needs the same number of prompts: a global prompt and >= 1 concept")
            self.text_encoder = StagedTextEncoder(text_model, text_stages, trainable=train_text)
            text_width = self.text_encoder.hidden_size
            if self.text_encoder.num_stages != 5:
                raise ValueError(f"text_stages must give 5 stages (embeddings + 4 fused), got {list(text_stages)}")
            prompts = [p for texts in class_texts for p in texts]
            ids, mask, lengths = tokenize(prompts, text_model, max_text_len, return_lengths=True)
            if (lengths > max_text_len).any():
                log.warning(
                    "%d of %d class prompts are longer than max_text_len=%d tokens and were truncated (longest %d)",
                    int((lengths > max_text_len).sum()),
                    len(prompts),
                    max_text_len,
                    int(lengths.max()),
                )
            self.register_buffer("prompt_ids", torch.from_numpy(ids), persistent=False)
            self.register_buffer("prompt_mask", torch.from_numpy(mask), persistent=False)
            self.prompts_per_class = len(class_texts[0])
            self.bifusion = nn.ModuleList(
                build_fusion(
                    "bifusion",
                    dim=w,
                    text_dim=text_width,
                    depth=fusion_depth,
                    num_heads=fusion_heads,
                    mlp_dim=fusion_mlp,
                    downsample_rate=attention_downsample,
                    update_text=alignment or s < 3,
                )  # without alignment nothing reads the last text
                for s, w in enumerate(widths)
            )
        self.alignment = alignment
        if alignment:
            self.class_head = mlp(widths[-1], widths[-1], num_classes)
            self.vision_proj = nn.Linear(widths[-1], align_dim)
            self.text_proj = nn.Linear(text_width, align_dim)

    def prompt_prefix(self) -> Tensor:
        """(P, L, H): the class prompts through text stages 0 and 1, the part of the text path no image reaches
        (the first fusion comes after stage 1); the same for every image, so inference may compute it once and
        pass it to :meth:`forward`. Later text stages read the fused, image-dependent [CLS] states."""
        if self.text_encoder is None:
            raise ValueError("this BiPVL-Seg was built without text (text=False): it has no prompts")
        states = self.text_encoder.stage(0, mask=self.prompt_mask, ids=self.prompt_ids)
        return self.text_encoder.stage(1, states, self.prompt_mask)

    def _encode(self, image: Tensor, prefix: Tensor | None = None) -> tuple[list[Tensor], Tensor, Tensor | None]:
        """The Swin stages with a BiFusion after each: the hidden states the decoder reads (as ``SwinTransformer``
        returns them: pre-fusion skips, the fused stage 4 as bottleneck), the fused bottleneck features, and the
        final prompt states (B * P, L, H) or None. ``prefix``: :meth:`prompt_prefix`, else computed here."""
        vit, batch = self.vision.swinViT, image.shape[0]  # not len(): export keeps the batch dynamic
        x = vit.pos_drop(vit.patch_embed(image))
        hidden = [vit.proj_out(x, self.vision.normalize)]
        text, fusions = self.text_encoder, self.bifusion
        prompt_states = mask = None
        if text is not None:
            mask = self.prompt_mask.repeat(batch, 1)
            if prefix is None:
                prompt_states = text.stage(0, mask=mask, ids=self.prompt_ids.repeat(batch, 1))
            else:
                prompt_states = prefix.repeat(batch, 1, 1)  # already through stage 1
        for s in range(4):
            if vit.use_v2:
                x = getattr(vit, f"layers{s + 1}c")[0](x.contiguous())
            x = getattr(vit, f"layers{s + 1}")[0](x.contiguous())
            if s < 3:
                hidden.append(vit.proj_out(x, self.vision.normalize))  # a skip: pre-fusion
            if text is not None and fusions is not None and prompt_states is not None:
                if s > 0 or prefix is None:
                    prompt_states = text.stage(s + 1, prompt_states, mask)
                x, cls = fusions[s](x, prompt_states[:, 0].view(batch, -1, prompt_states.shape[-1]))
                prompt_states = torch.cat([cls.flatten(0, 1).unsqueeze(1), prompt_states[:, 1:]], dim=1)
        hidden.append(vit.proj_out(x, self.vision.normalize))  # the bottleneck: fused
        return hidden, x, prompt_states

    def _decode(self, image: Tensor, hidden: list[Tensor]) -> Tensor:
        """SwinUNETR's encoder blocks and decoder on the pre-fusion hidden states (its ``forward``, after swinViT)."""
        v = self.vision
        enc0, enc1, enc2, enc3 = v.encoder1(image), v.encoder2(hidden[0]), v.encoder3(hidden[1]), v.encoder4(hidden[2])
        dec3 = v.decoder5(v.encoder10(hidden[4]), hidden[3])
        dec0 = v.decoder2(v.decoder3(v.decoder4(dec3, enc3), enc2), enc1)
        return v.out(v.decoder1(dec0, enc0))

    def forward(self, batch: dict[str, Tensor], prompt_prefix: Tensor | None = None) -> BiPVLSegOutput:
        """``prompt_prefix``: :meth:`prompt_prefix`, computed once (the same output, without the text encoder's
        first stages); None computes it."""
        image = batch["image"]
        if not torch.jit.is_scripting() and not torch.jit.is_tracing():
            self.vision._check_input_size(image.shape[2:])  # MONAI's message: sides divisible by 32
        hidden, bottleneck, prompt_states = self._encode(image, prompt_prefix)
        logits = self._decode(image, hidden)
        if not self.alignment or prompt_states is None:  # alignment=True is refused without text
            return BiPVLSegOutput(logits)
        tokens = bottleneck.flatten(2).transpose(1, 2)  # (B, N, 16 * feature_size)
        class_logits = self.class_head(tokens)
        weights = class_logits.softmax(-1)
        prototypes = torch.einsum("bnc,bnd->bcd", weights, tokens) / weights.sum(1).unsqueeze(-1).clamp_min(1e-6)
        prompts = self.text_proj(prompt_states[:, 0]).view(
            image.shape[0], -1, self.prompts_per_class, self.text_proj.out_features
        )
        return BiPVLSegOutput(logits, class_logits, self.vision_proj(prototypes), prompts[:, :, 0], prompts[:, :, 1:])
