"""ResNet-50 (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016; torchvision v1.5) in plain
torch, with torchvision's parameter names. No ImageNet weights ship: pass a local state dict as ``weights=``.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from gpfuse.encoders.backbone import ResNetStagesMixin, init_conv_bn

__all__ = ["Bottleneck", "ResNet50Encoder", "resnet50_imagenet"]


class Bottleneck(nn.Module):
    """torchvision's ResNet v1.5 bottleneck (stride on the 3x3 conv), expansion 4."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        return self.relu(self.bn3(self.conv3(y)) + identity)


class ResNet50Encoder(ResNetStagesMixin, nn.Module):
    """ResNet-50 (He et al. 2016, torchvision v1.5) whose ``state_dict`` equals torchvision's ``resnet50()``.

    Shapes: (B, in_channels, H, W) -> [x, (B, 64, H/2), (B, 256, H/4), (B, 512, H/8), (B, 1024, H/16),
    (B, 2048, H/32)]. ``fc`` (2048 -> num_classes) is used only by ``forward_logits``.
    """

    first_conv = "conv1"
    head_prefixes = ("fc.",)
    input_mean = (0.485, 0.456, 0.406)
    input_std = (0.229, 0.224, 0.225)

    def __init__(self, in_channels: int = 3, num_classes: int = 1000, layers: tuple[int, ...] = (3, 4, 6, 3)) -> None:
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self._stem_tail()
        inplanes = 64
        for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers)):
            stride = 1 if i == 0 else 2
            stage = [Bottleneck(inplanes, planes, stride)]
            inplanes = planes * Bottleneck.expansion
            stage += [Bottleneck(inplanes, planes) for _ in range(blocks - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
        self.fc: nn.Linear | None = nn.Linear(2048, num_classes)
        self.out_channels = (in_channels, 64, 256, 512, 1024, 2048)
        init_conv_bn(self)


def resnet50_imagenet() -> Path:
    raise FileNotFoundError(
        "ResNet-50 ImageNet weights are not shipped with gpfuse (nothing is downloaded): "
        "give a local path to a torchvision or timm resnet50 state dict "
        "(.pth/.pt or .safetensors) as weights="
    )
