"""2D image encoders by name: ResNet-50, EfficientNet-Lite0 and Res2Net-50 (v1, v1b), built with random
weights, the shipped ImageNet weights (EfficientNet-Lite0 only) or a local weights file.

Every encoder follows smp's interface (:mod:`gpfuse.encoders.backbone`). Nothing downloads.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TypeAlias

from gpfuse.encoders.backbone import freeze_batchnorm, global_pool
from gpfuse.encoders.efficientnet_lite import EfficientNetLite0Encoder, efficientnet_lite0_weights_path
from gpfuse.encoders.res2net import Res2Net50Encoder, Res2Net50V1bEncoder, res2net50_imagenet, res2net50_v1b_imagenet
from gpfuse.encoders.resnet import ResNet50Encoder, resnet50_imagenet
from gpfuse.encoders.weights import adapt_first_conv, load_image_weights, read_state_dict

__all__ = [
    "IMAGE_ENCODERS",
    "EfficientNetLite0Encoder",
    "ImageEncoder",
    "ResNet50Encoder",
    "efficientnet_lite0_weights_path",
    "freeze_batchnorm",
    "get_image_encoder",
    "global_pool",
    "load_image_weights",
    "read_state_dict",
]

log = logging.getLogger(__name__)

#: an encoder :func:`get_image_encoder` builds (Res2Net-50 v1b is a :class:`Res2Net50Encoder`)
ImageEncoder: TypeAlias = ResNet50Encoder | EfficientNetLite0Encoder | Res2Net50Encoder

IMAGE_ENCODERS: dict[str, tuple[type[ImageEncoder], Callable[[], Path]]] = {
    "resnet50": (ResNet50Encoder, resnet50_imagenet),
    "efficientnet_lite0": (EfficientNetLite0Encoder, efficientnet_lite0_weights_path),
    "res2net50_26w_4s": (Res2Net50Encoder, res2net50_imagenet),
    "res2net50_v1b_26w_4s": (Res2Net50V1bEncoder, res2net50_v1b_imagenet),
}


def _build(
    cls: type[ImageEncoder], weights: str | Path | None, in_channels: int, imagenet: Callable[[], Path]
) -> ImageEncoder:
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
        setattr(owner, attr, adapt_first_conv(getattr(owner, attr), in_channels))
        model.out_channels = (in_channels, *model.out_channels[1:])
        log.info("%s: first conv adapted from %d to %d input channels", cls.__name__, file_in, in_channels)
    log.info("%s: weights loaded from %s", cls.__name__, path)
    return model


def get_image_encoder(name: str, weights: str | Path | None = None, in_channels: int = 3) -> ImageEncoder:
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
