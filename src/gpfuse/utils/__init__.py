"""Small helpers with no gpfuse dependencies (files)."""
