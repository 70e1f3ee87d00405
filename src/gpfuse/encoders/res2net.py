"""Res2Net-50 26w x 4s (Gao et al., "Res2Net: A New Multi-scale Backbone Architecture", TPAMI 43(2), 2021) in
plain torch, with the parameter names of the official releases (github.com/Res2Net/Res2Net-PretrainedModels):

* ``Res2Net50Encoder``: ``res2net.py`` ``res2net50_26w_4s`` (= timm ``res2net50_26w_4s``, same file
  ``res2net50_26w_4s-06e79181.pth``): 7x7 stem, strided 1x1 downsample.
* ``Res2Net50V1bEncoder``: ``res2net_v1b.py`` ``res2net50_v1b_26w_4s`` (``-3cf99910.pth``, the backbone of
  PraNet, LDNet, EA-DK): ResNet-D tweaks (He et al., "Bag of Tricks", CVPR 2019), i.e. a deep 3x3 stem and an
  average-pool-then-1x1 downsample.

Same interface as :mod:`gpfuse.encoders.backbone` (smp ``EncoderMixin``); ``fc`` is kept for strict loading and
``forward_logits`` only. No ImageNet weights ship: pass a local state dict as ``weights=``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from gpfuse.encoders.backbone import ResNetStagesMixin, init_conv_bn

__all__ = ["Bottle2neck", "Res2Net50Encoder", "Res2Net50V1bEncoder"]


class Bottle2neck(nn.Module):
    """Res2Net bottleneck: 1x1 conv to ``scale`` splits of ``width = floor(planes * base_width / 64)``
    channels, 3x3 convs on the first ``scale - 1`` splits, 1x1 conv to ``4 * planes``; residual add, ReLU.

    ``stage=True`` (first block of a stage): every split gets its own 3x3 conv with the block's stride and the
    last split is ``AvgPool2d(3, stride, padding=1)``-ed (zero padding counted, as in the release).
    ``stage=False``: hierarchical, ``y_i = K_i(x_i + y_{i-1})`` for i >= 1, the last split passes through.
    ``avg_down``: v1b downsample ``AvgPool2d(stride, ceil_mode) -> 1x1 conv -> BN`` instead of a strided 1x1.
    """

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        base_width: int = 26,
        scale: int = 4,
        stage: bool = False,
        avg_down: bool = False,
    ) -> None:
        super().__init__()
        if scale < 2:
            raise ValueError(f"scale must be >= 2, got {scale}")
        width = planes * base_width // 64
        out = planes * self.expansion
        self.width = width
        self.conv1 = nn.Conv2d(inplanes, width * scale, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width * scale)
        self.convs = nn.ModuleList(
            nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False) for _ in range(scale - 1)
        )
        self.bns = nn.ModuleList(nn.BatchNorm2d(width) for _ in range(scale - 1))
        self.pool = nn.AvgPool2d(3, stride=stride, padding=1) if stage else None
        self.conv3 = nn.Conv2d(width * scale, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != out:
            self.downsample = (
                nn.Sequential(
                    nn.AvgPool2d(stride, stride=stride, ceil_mode=True, count_include_pad=False),
                    nn.Conv2d(inplanes, out, 1, bias=False),
                    nn.BatchNorm2d(out),
                )
                if avg_down
                else nn.Sequential(nn.Conv2d(inplanes, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        splits = torch.split(self.relu(self.bn1(self.conv1(x))), self.width, dim=1)
        outs: list[Tensor] = []
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            sp = splits[i] if i == 0 or self.pool is not None else outs[-1] + splits[i]
            outs.append(self.relu(bn(conv(sp))))
        outs.append(splits[-1] if self.pool is None else self.pool(splits[-1]))
        return self.relu(self.bn3(self.conv3(torch.cat(outs, dim=1))) + identity)


class Res2Net50Encoder(ResNetStagesMixin, nn.Module):
    """Res2Net-50 26w x 4s, v1 release: ``state_dict`` equals ``res2net50_26w_4s`` of ``res2net.py`` / timm.

    Stem ``conv1`` 7x7/2 (64), ``bn1``, ReLU, max-pool 3x3/2; ``layer1..4`` of (3, 4, 6, 3) ``Bottle2neck``
    blocks, planes 64..512, width 26..208, the first of each stage ``stage=True``; ``fc`` 2048 -> num_classes.

    Shapes: (B, in_channels, H, W) -> [x, (B, 64, H/2), (B, 256, H/4), (B, 512, H/8), (B, 1024, H/16),
    (B, 2048, H/32)] (sizes rounded up, as the convs do); the stride-2 map is the stem before the max-pool.
    """

    first_conv = "conv1"
    head_prefixes = ("fc.",)
    input_mean = (0.485, 0.456, 0.406)
    input_std = (0.229, 0.224, 0.225)
    deep_stem = False  # v1b: 3x3 stem (3 -> 32 -> 32 -> 64) and average-pool downsample

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 1000,
        layers: tuple[int, ...] = (3, 4, 6, 3),
        base_width: int = 26,
        scale: int = 4,
    ) -> None:
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        if self.deep_stem:
            self.conv1: nn.Module = nn.Sequential(
                nn.Conv2d(in_channels, 32, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(32),
                nn.ReLU(inplace=True),
                nn.Conv2d(32, 32, 3, padding=1, bias=False),
                nn.BatchNorm2d(32),
                nn.ReLU(inplace=True),
                nn.Conv2d(32, 64, 3, padding=1, bias=False),
            )
        else:
            self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self._stem_tail()
        inplanes = 64
        for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers)):
            stage = [
                Bottle2neck(
                    inplanes, planes, 1 if i == 0 else 2, base_width, scale, stage=True, avg_down=self.deep_stem
                )
            ]
            inplanes = planes * Bottle2neck.expansion
            stage += [Bottle2neck(inplanes, planes, 1, base_width, scale) for _ in range(blocks - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
        self.fc: nn.Linear | None = nn.Linear(512 * Bottle2neck.expansion, num_classes)
        self.out_channels = (in_channels, 64, 256, 512, 1024, 2048)
        init_conv_bn(self)


class Res2Net50V1bEncoder(Res2Net50Encoder):
    """Res2Net-50 v1b 26w x 4s: ``state_dict`` equals ``res2net50_v1b_26w_4s`` of ``res2net_v1b.py``.

    Stem ``conv1`` = Sequential(3x3/2 conv 32, BN, ReLU, 3x3 conv 32, BN, ReLU, 3x3 conv 64) (keys
    ``conv1.0/1/3/4/6``), then ``bn1``; downsample ``AvgPool2d -> 1x1 conv -> BN`` (keys ``downsample.1/2``).
    Blocks, shapes and outputs as :class:`Res2Net50Encoder`.
    """

    first_conv = "conv1.0"
    deep_stem = True


def _not_shipped(name: str, release: str) -> Path:
    raise FileNotFoundError(
        f"{name} ImageNet weights are not shipped with gpfuse (nothing is downloaded): give a "
        f"local path to a .pth/.pt or .safetensors state dict (the official {release}) "
        f"as weights="
    )


def res2net50_imagenet() -> Path:
    """Always raises: the v1 weights (``res2net50_26w_4s-06e79181.pth``) must be given as a local file."""
    return _not_shipped("Res2Net-50 26w_4s", "res2net50_26w_4s-06e79181.pth")


def res2net50_v1b_imagenet() -> Path:
    """Always raises: the v1b weights (``res2net50_v1b_26w_4s-3cf99910.pth``) must be given as a local file."""
    return _not_shipped("Res2Net-50 v1b 26w_4s", "res2net50_v1b_26w_4s-3cf99910.pth")
