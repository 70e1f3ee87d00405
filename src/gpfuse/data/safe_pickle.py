"""Restricted unpickling for untrusted feature files: numpy arrays and plain containers only.

``pickle.load`` runs any callable a file names, so a feature pickle from the internet could execute
code. :func:`safe_load_pickle` resolves only the globals that numpy array reconstruction and built-in
containers need; none of them can run arbitrary code.
"""

from __future__ import annotations

import pickle
from pathlib import Path

__all__ = ["UnsafePickleError", "safe_load_pickle"]

_NUMPY_CORE = ("numpy.core", "numpy._core")  # numpy 1.x and 2.x module names
_ALLOWED: frozenset[tuple[str, str]] = frozenset(
    [(f"{core}.multiarray", name) for core in _NUMPY_CORE for name in ("_reconstruct", "scalar")]
    + [(f"{core}.numeric", "_frombuffer") for core in _NUMPY_CORE]  # protocol 5 arrays
    + [("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"), ("collections", "OrderedDict")]
    # Types pickled by reduce (empty bytes at protocol < 3, set, complex, ...). Protocol 2 pickles
    # name ``__builtin__``, which Unpickler.find_class maps to ``builtins``.
    + [
        (module, name)
        for module in ("builtins", "__builtin__")
        for name in ("set", "frozenset", "bytes", "bytearray", "complex", "slice", "range")
    ]
)


class UnsafePickleError(ValueError):
    """A pickle names a global outside the allow-list."""


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, path: Path) -> None:
        super().__init__(file, encoding="latin1")  # latin1: Python 2 numpy pickles hold raw bytes in str
        self._path = path

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _ALLOWED:
            raise UnsafePickleError(
                f"{self._path}: refused to unpickle global '{module}.{name}' (only numpy arrays and plain "
                "containers are allowed; convert the file with a trusted tool if you know its origin)"
            )
        return super().find_class(module, name)


def safe_load_pickle(path: str | Path) -> object:
    """Unpickle ``path`` allowing only numpy arrays, numpy scalars/dtypes and built-in containers.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        UnsafePickleError: the file names any other global (e.g. ``posix.system``); nothing is called.
        ValueError: the file is truncated or not a pickle.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pickle file not found: {path}")
    with path.open("rb") as f:
        try:
            return _RestrictedUnpickler(f, path).load()
        except UnsafePickleError:
            raise
        except Exception as err:  # EOFError, UnpicklingError, struct/Unicode errors, ...: corrupt input
            raise ValueError(f"{path}: truncated or corrupt pickle ({type(err).__name__}: {err})") from err
