"""An ONNX file written by ``gpfuse export`` standing in for a run's torch model: ``model(batch).field`` as the
predictors call it, run by ONNX Runtime on the CPU.

The file's inputs are named after the model's batch keys and its outputs after the fields of the model's output
(:mod:`gpfuse.export.graph_spec`), so a batch is fed by name and the outputs come back as attributes.

A batch key the graph does not take is refused, not dropped: the torch model may read it (report tokens given to
an image-only GPF-Net export would otherwise be ignored without a word), and an export keeps every input it was
traced with, used or not. The one exception is a key known to be irrelevant: one of a modality that the file's
``modalities`` metadata (sentiment exports: the modalities the model reads) leaves out, e.g. ``audio`` and
``audio_mask`` for a text-only model of a text + audio run; the torch model ignores those too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["GraphInputsOnly", "OnnxModel", "OnnxOutput"]

#: ONNX Runtime's element types -> numpy's
_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
}


class OnnxOutput:
    """The graph's outputs as attributes (``.logits``, ``.embedding``, ``.score``): CPU tensors."""

    def __init__(self, file: Path, outputs: dict[str, Tensor]) -> None:
        self._file = file
        self.__dict__.update(outputs)

    def __getattr__(self, name: str) -> Any:  # only called for a missing attribute
        raise AttributeError(f"{self.__dict__.get('_file')}: the ONNX graph has no output {name!r}")


class OnnxModel(nn.Module):
    """An ONNX file of ``gpfuse export`` as a callable model: ``model(batch)`` feeds each graph input from the
    batch key of its name and returns an :class:`OnnxOutput`.

    Args:
        path: the ONNX file. threads: ONNX Runtime's intra-op threads (default: its own choice).

    Attributes:
        metadata: the file's ``metadata_props`` (task, preprocessing, ...). gpfuse_config: the model's
        ``{"name", "options"}`` (its ``gpfuse_model`` metadata), as on a torch model.
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        super().__init__()
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such ONNX file")
        options = ort.SessionOptions()
        if threads is not None:
            if threads < 1:
                raise ValueError(f"threads must be >= 1, got {threads}")
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # ONNX Runtime's own error types: an invalid or truncated file
            raise ValueError(f"{self.path}: not a readable ONNX file ({type(err).__name__}: {err})") from None
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        if "gpfuse_model" not in self.metadata:
            raise ValueError(f"{self.path}: no gpfuse_model metadata: not a file written by `gpfuse export`")
        self.gpfuse_config: dict[str, Any] = json.loads(self.metadata["gpfuse_model"])
        self.input_types = {i.name: _DTYPES.get(i.type) for i in self.session.get_inputs()}
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.modalities: list[str] | None = (
            json.loads(self.metadata["modalities"]) if "modalities" in self.metadata else None
        )

    @property
    def device(self) -> torch.device:
        """Where the outputs are: the CPU (ONNX Runtime's CPU execution provider)."""
        return torch.device("cpu")

    def _unread(self, key: str) -> bool:
        """``key`` (``m``, ``m_mask``, ``m_ids``) is of a modality ``m`` that the model does not read."""
        modality = key.removesuffix("_mask").removesuffix("_ids")
        return self.modalities is not None and modality not in self.modalities

    def forward(self, batch: dict[str, Tensor]) -> OnnxOutput:
        """``batch``: the torch model's batch dict (its keys the graph's input names) -> the outputs."""
        missing = [name for name in self.input_types if name not in batch]
        extra = sorted(k for k in set(batch) - set(self.input_types) if not self._unread(k))
        if missing or extra:
            problem = f"needs {missing}, not given" if missing else f"takes no {extra}"
            raise ValueError(f"{self.path}: the ONNX graph {problem} (its inputs: {list(self.input_types)})")
        feed = {}
        for name, dtype in self.input_types.items():
            array = batch[name].detach().cpu().numpy()
            feed[name] = array if dtype is None else array.astype(dtype, copy=False)
        try:
            outputs = self.session.run(self.output_names, feed)
        except Exception as err:  # ONNX Runtime's own error types: shapes or ranks it does not take
            shapes = {k: tuple(v.shape) for k, v in feed.items()}
            raise ValueError(f"{self.path}: ONNX Runtime refused inputs of shapes {shapes}: {err}") from None
        return OnnxOutput(
            self.path, {k: torch.from_numpy(np.asarray(v)) for k, v in zip(self.output_names, outputs, strict=True)}
        )


class GraphInputsOnly(nn.Module):
    """An :class:`OnnxModel` given only the batch keys its graph takes: for evaluation, whose batches also carry
    labels, sizes and indices that the torch model ignores (a predictor's batches hold the inputs alone, and
    :class:`OnnxModel` refuses any other key there)."""

    def __init__(self, model: OnnxModel) -> None:
        super().__init__()
        self.onnx = model
        self.gpfuse_config = model.gpfuse_config

    def forward(self, batch: dict[str, Tensor]) -> OnnxOutput:
        return self.onnx({k: v for k, v in batch.items() if k in self.onnx.input_types})
