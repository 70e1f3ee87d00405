"""The files that decoded completely once, so that a dataset is checked by decoding every file at its first
use and not again: a truncated JPEG or ``.nii.gz`` passes a header check (PIL's ``verify()``, nibabel's
header read) and fails mid-training, so the checks decode the pixels; the names of the files that decoded are
kept with their size and modification time in ``<cache>/decoded_files.json`` (:func:`default_cache_dir`), and
a file that changed is decoded again."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from gpfuse.utils.cache import default_cache_dir
from gpfuse.utils.files import atomic_write_text

__all__ = ["DecodedFiles"]

log = logging.getLogger(__name__)


def _stamp(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


class DecodedFiles:
    """``with DecodedFiles() as known:`` loads the record, ``known.contains(path)`` / ``known.add(path)`` during
    the checks, and the record is saved (atomically) on leaving the block. An unreadable record is started
    afresh with a warning (it only saves time)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or default_cache_dir() / "decoded_files.json"
        self.files: dict[str, Any] = {}
        self.added = 0

    def __enter__(self) -> DecodedFiles:
        if self.path.is_file():
            try:
                self.files = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as err:
                log.warning("%s: unreadable record of decoded files (%s); checking every file again", self.path, err)
        return self

    def contains(self, path: str | Path) -> bool:
        p = Path(path)
        return self.files.get(str(p.resolve())) == _stamp(p)

    def add(self, path: str | Path) -> None:
        p = Path(path)
        self.files[str(p.resolve())] = _stamp(p)
        self.added += 1

    def __exit__(self, *exc: object) -> None:
        if self.added:
            try:
                atomic_write_text(self.path, json.dumps(self.files))
            except OSError as err:  # a read-only cache only costs time
                log.warning("cannot record decoded files in %s (%s)", self.path, err)
