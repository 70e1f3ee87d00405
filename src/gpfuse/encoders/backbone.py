"""What every 2D image encoder shares (after smp's ``EncoderMixin``): the feature-list interface, pooling,
BatchNorm freezing, torchvision's initialisation and the ResNet-style stage walk used by ResNet and Res2Net.

``forward(x)`` takes (B, in_channels, H, W) and returns ``[x, stride 2, stride 4, stride 8, stride 16,
stride 32]`` feature maps whose channels are ``out_channels``; ``feature_dim`` is the last entry. The ImageNet
classifier is kept so that full checkpoints load with ``strict=True`` and ``forward_logits`` can check them;
``forward`` never uses it. Under DDP call ``drop_head()`` (or let Lightning find unused parameters).
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor, nn

__all__ = ["EncoderMixin", "ResNetStagesMixin", "freeze_batchnorm", "global_pool", "init_conv_bn"]


def global_pool(features: list[Tensor] | Tensor) -> Tensor:
    """Global average pool of the last feature map: (B, C, H, W) (or a list ending in one) -> (B, C)."""
    x = features[-1] if isinstance(features, (list, tuple)) else features
    return x.mean(dim=(-2, -1))


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Put every BatchNorm layer of ``module`` in eval mode (running statistics used and left unchanged);
    their affine weights still train. Call it again after each ``module.train()``."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    return module


def init_conv_bn(module: nn.Module) -> None:
    """torchvision's initialisation: Kaiming-normal (fan_out) convolutions, BatchNorm weight 1 bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class EncoderMixin:
    """What every image encoder exposes (after smp's ``EncoderMixin``): ``out_channels`` of the feature maps
    ``forward`` returns, input first, and ``feature_dim``, the channels of the last one.

    Each encoder class also names its stem convolution (``first_conv``, a dotted module path), the state-dict
    prefixes of its ImageNet head (``head_prefixes``) and the input normalisation of its pretrained weights
    (``input_mean`` / ``input_std``, per RGB channel on 0..1 pixels)."""

    first_conv: ClassVar[str]
    head_prefixes: ClassVar[tuple[str, ...]]
    input_mean: ClassVar[tuple[float, float, float]]
    input_std: ClassVar[tuple[float, float, float]]
    out_channels: tuple[int, ...]

    @property
    def feature_dim(self) -> int:
        return self.out_channels[-1]


class ResNetStagesMixin(EncoderMixin):
    """``forward``, ``forward_logits`` and ``drop_head`` of torchvision-style ResNets (ResNet, Res2Net): a stem
    ``conv1``-``bn1``-``relu``, ``maxpool``, ``layer1`` .. ``layer4``, and the ImageNet head ``fc``."""

    conv1: nn.Module
    bn1: nn.Module
    relu: nn.Module
    maxpool: nn.Module
    layer1: nn.Module
    layer2: nn.Module
    layer3: nn.Module
    layer4: nn.Module
    fc: nn.Linear | None

    def _stem_tail(self) -> None:
        """The stem after ``conv1`` (64 channels): ``bn1``, ``relu``, ``maxpool``."""
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)

    def forward(self, x: Tensor) -> list[Tensor]:
        features = [x]
        x = self.relu(self.bn1(self.conv1(x)))
        features.append(x)
        x = self.maxpool(x)
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = stage(x)
            features.append(x)
        return features

    def forward_logits(self, x: Tensor) -> Tensor:
        """ImageNet logits (B, num_classes): global average pool, then ``fc``."""
        if self.fc is None:
            raise RuntimeError("forward_logits: the classifier was removed by drop_head()")
        return self.fc(global_pool(self.forward(x)))

    def drop_head(self) -> None:
        """Remove ``fc`` (unused by ``forward``); checkpoints then load without their ``fc.*`` keys."""
        self.fc = None
