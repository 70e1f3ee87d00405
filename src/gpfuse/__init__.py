"""gpfuse: gated, progressive multimodal fusion (GPF-Net, GRF, PGF-Net, EA-DK, BiPVL-Seg)."""
__version__ = "0.1.0"
