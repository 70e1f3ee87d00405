"""Encoders: feature-sequence projections and frozen text encoders."""
from gpfuse.encoders.sequence import SequenceProjection, SinusoidalPositionalEncoding
from gpfuse.encoders.text import TextEncoder, default_text_model_path, encode_texts, resolve_text_model, tokenize

__all__ = ["SequenceProjection", "SinusoidalPositionalEncoding", "default_text_model_path", "encode_texts",
           "resolve_text_model", "TextEncoder", "tokenize"]
from gpfuse.encoders.image import (IMAGE_ENCODERS, EfficientNetLite0Encoder, ResNet50Encoder,
                                   efficientnet_lite0_weights_path, get_image_encoder, global_pool,
                                   load_image_weights, read_state_dict)

__all__ += ["IMAGE_ENCODERS", "EfficientNetLite0Encoder", "ResNet50Encoder", "efficientnet_lite0_weights_path",
            "get_image_encoder", "global_pool", "load_image_weights", "read_state_dict"]
