"""Where gpfuse keeps what it computes once and reuses: ``$GPFUSE_CACHE``, else ``~/.cache/gpfuse``."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["default_cache_dir"]


def default_cache_dir() -> Path:
    return Path(os.environ.get("GPFUSE_CACHE", Path.home() / ".cache" / "gpfuse"))
