"""Encoders: 2D image backbones, feature-sequence projections and frozen text encoders."""

from gpfuse.encoders.image import (
    IMAGE_ENCODERS,
    EfficientNetLite0Encoder,
    ResNet50Encoder,
    efficientnet_lite0_weights_path,
    get_image_encoder,
    global_pool,
    load_image_weights,
    read_state_dict,
)
from gpfuse.encoders.sequence import SequenceProjection, SinusoidalPositionalEncoding
from gpfuse.encoders.text import TextEncoder, default_text_model_path, encode_texts, resolve_text_model, tokenize

__all__ = [
    "IMAGE_ENCODERS",
    "EfficientNetLite0Encoder",
    "ResNet50Encoder",
    "SequenceProjection",
    "SinusoidalPositionalEncoding",
    "TextEncoder",
    "default_text_model_path",
    "efficientnet_lite0_weights_path",
    "encode_texts",
    "get_image_encoder",
    "global_pool",
    "load_image_weights",
    "read_state_dict",
    "resolve_text_model",
    "tokenize",
]
