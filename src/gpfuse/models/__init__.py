"""Models, one file per system, built by name: ``create_model("grf", input_dims=..., **options)``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from torch import nn

from gpfuse.models.bipvl_seg import BiPVLSeg, BiPVLSegOutput
from gpfuse.models.ea_dk import EADK
from gpfuse.models.gpf_net import GPFNet, GPFNetOutput
from gpfuse.models.grf import GRF, UnimodalRegressor
from gpfuse.models.io import PretrainedMixin, from_pretrained, load_pretrained, save_pretrained
from gpfuse.models.outputs import RegressionOutput, SegmentationOutput
from gpfuse.models.pgf_net import PGFNet

__all__ = [
    "EADK",
    "GRF",
    "MODELS",
    "BiPVLSeg",
    "BiPVLSegOutput",
    "GPFNet",
    "GPFNetOutput",
    "PGFNet",
    "RegressionOutput",
    "SegmentationOutput",
    "UnimodalRegressor",
    "create_model",
    "from_pretrained",
    "load_pretrained",
    "save_pretrained",
]

MODELS: dict[str, Callable[..., nn.Module]] = {
    "grf": GRF,
    "unimodal": UnimodalRegressor,
    "gpf_net": GPFNet,
    "ea_dk": EADK,
    "pgf_net": PGFNet,
    "bipvl_seg": BiPVLSeg,
}


def create_model(name: str, **options: Any) -> nn.Module:
    """Build model ``name``; the name and options are kept on ``model.gpfuse_config`` for saving."""
    try:
        factory = MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; choose one of {sorted(MODELS)}") from None
    try:
        model = factory(**options)
    except TypeError as err:
        raise TypeError(f"bad options for model {name!r}: {err}") from err
    cast(PretrainedMixin, model).gpfuse_config = {"name": name, "options": options}  # every model in MODELS is one
    return model
