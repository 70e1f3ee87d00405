"""Encoders: feature-sequence projections and frozen text encoders."""
from gpfuse.encoders.sequence import SequenceProjection, SinusoidalPositionalEncoding
from gpfuse.encoders.text import default_text_model_path, encode_texts, resolve_text_model

__all__ = ["SequenceProjection", "SinusoidalPositionalEncoding", "default_text_model_path", "encode_texts",
           "resolve_text_model"]
