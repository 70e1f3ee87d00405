"""Run configuration: YAML validated on load with pydantic.

A config has ``name``, ``output_dir`` and three sections: ``data`` (its ``source`` picks the layout and so
the task: sentiment regression or re-identification), ``model``, ``train``.
``model`` is checked against the signature of the chosen model's constructor, so an unknown key or a
wrong type is reported with its dotted key and the file, before anything runs.
"""

from __future__ import annotations

import copy
import inspect
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from gpfuse.models import MODELS
from gpfuse.utils.precision import Precision

__all__ = [
    "ConfigError",
    "DataConfig",
    "ReIDDataConfig",
    "RunConfig",
    "SegDataConfig",
    "SentimentDataConfig",
    "TrainConfig",
    "VolumeDataConfig",
    "apply_overrides",
    "load_config",
    "parse_overrides",
    "validate_saved_config",
]


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the file and the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SentimentDataConfig(_Strict):
    """Utterance-level sentiment features: where they are and how they become tensors."""

    source: Literal["mosi", "pickle", "npz"] = "mosi"
    root: str = "../shared/data/mosi"
    layout: Literal["auto", "mmsa", "mult"] = "auto"
    modalities: list[str] = Field(default_factory=lambda: ["text", "audio"], min_length=1)
    text_model: str = "minilm"
    max_len: dict[str, int] = Field(default_factory=lambda: {"text": 50, "audio": 50, "vision": 50})
    standardize: bool = True
    cache_dir: str | None = None
    synthetic_if_missing: bool = Field(
        False,
        description="no longer read (kept so that older run folders load): "
        "generated data comes only from `gpfuse demo`",
    )
    batch_size: int = Field(32, ge=1)
    num_workers: int = Field(0, ge=0)


def _split_seed(what: str) -> Any:
    """The ``data.split_seed`` field: 0, fixed, so that run seeds vary training only, never the test set."""
    return Field(0, description=f"seed of {what} (fixed: run seeds vary training only, never the test set)")


def _both_protocols() -> list[Literal["own", "query"]]:
    return ["own", "query"]


class ReIDDataConfig(_Strict):
    """Re-identification images (+ reports): layout, fold or split, transforms, sampling, evaluation."""

    source: Literal["colo_pair", "market1501", "cuhk01"]
    root: str
    fold: int = Field(0, ge=0, description="Colo-Pair fold, or CUHK01 random split index")
    num_folds: int = Field(4, ge=2)
    val_ids: int = Field(2, ge=0, description="training videos (Colo-Pair) or identities carved for validation")
    split_seed: int = _split_seed("the validation carve and CUHK01's random split")
    report_table: str | None = None
    missing_report: Literal["error", "empty"] = "error"
    image_size: tuple[int, int] = (224, 224)
    pad: int = Field(10, ge=0)
    batch_size: int = Field(32, ge=2)
    num_instances: int = Field(4, ge=1, description="images per identity in a batch (P x K sampler)")
    eval_batch_size: int = Field(64, ge=1)
    num_workers: int = Field(0, ge=0)
    on_bad_image: Literal["raise", "skip"] = "raise"
    protocols: list[Literal["own", "query"]] = Field(default_factory=_both_protocols)
    select_protocol: Literal["own", "query"] = "own"
    metric: Literal["euclidean", "cosine"] = "euclidean"
    ap: Literal["standard", "trapezoid"] = Field("standard", description="trapezoid: the GPF-Net code's old AP")
    rerank: bool = Field(False, description="also report k-reciprocal re-ranking (protocol 'own+rerank')")


class SegDataConfig(_Strict):
    """Image/mask folders for binary segmentation (``images/`` + ``masks/`` each; see ``gpfuse.data.polyp``).

    ``split``: ``given`` tests on the ``test`` folders; ``random`` (the EA-DK paper's 80/20) and ``group``
    (whole ``group_column`` groups of ``index.csv``, e.g. CVC-ClinicDB videos) hold ``test_fraction`` of the
    training folders out as the test set ``held_out``. Validation is the ``val`` folders, else
    ``val_fraction`` of the training images carved the same way; checkpoints are selected on it only.
    """

    source: Literal["polyp_folders"]
    train: list[str] = Field(min_length=1)
    val: list[str] = Field(default_factory=list)
    test: dict[str, str] = Field(default_factory=dict, description="test set name -> folder")
    split: Literal["given", "random", "group"] = "given"
    test_fraction: float = Field(0.2, gt=0, lt=1)
    val_fraction: float = Field(0.1, gt=0, lt=1)
    group_column: str = "video_sequence"
    subset: int | None = Field(None, ge=1, description="at most this many images per split (seeded): quick runs")
    split_seed: int = _split_seed("the carved splits and subsets")
    image_size: int = Field(352, ge=32)
    augment: bool = True
    flip_p: float = Field(0.5, ge=0, le=1)
    rotate: float = Field(15.0, ge=0, le=180)
    scale: tuple[float, float] = (0.75, 1.25)
    jitter: float = Field(0.2, ge=0, lt=1)
    batch_size: int = Field(16, ge=1)
    eval_batch_size: int = Field(8, ge=1)
    num_workers: int = Field(0, ge=0)
    on_bad_file: Literal["raise", "skip"] = "raise"
    nonbinary_mask: Literal["binarize", "raise", "skip"] = "binarize"


class VolumeDataConfig(_Strict):
    """Decathlon-layout volumes (``dataset.json`` + NIfTI) with a class-description CSV, for 3D segmentation.

    ``val_cases`` (model selection) and ``test_cases`` (reported once) are carved from the training list with
    ``split_seed`` (not the run's seed) and written to the run folder. ``test_cases: 0`` is refused unless
    ``test_is_validation: true`` says that the figures reported as test are knowingly those of the
    checkpoint-selection split.
    """

    source: Literal["decathlon"]
    root: str
    descriptions: str = Field(description="class-description CSV, or a shipped one: amos22, msd_brain, msd_hippocampus")
    val_cases: int = Field(20, ge=1)
    test_cases: int = Field(20, ge=0)
    test_is_validation: bool = Field(False, description="with test_cases 0: report the validation split as test")
    subset: int | None = Field(None, ge=1, description="train on at most this many cases (seeded): CPU budgets")
    split_seed: int = _split_seed("the carved splits and subsets")
    roi_size: tuple[int, int, int] = (96, 96, 96)
    pixdim: tuple[float, float, float] | None = None
    intensity: Literal["ct", "mr"] = "mr"
    ct_window: tuple[float, float] = (-175.0, 250.0)
    crop_foreground: bool = True
    samples_per_volume: int = Field(2, ge=1)
    flip_axes: tuple[Literal[0, 1, 2], ...] = Field(
        (0, 1, 2),
        description="RAS axes the anatomy may be mirrored along; leave out one that names classes (left/right organs)",
    )
    flip_prob: float = Field(0.1, ge=0, le=1)
    batch_size: int = Field(1, ge=1)
    sw_batch_size: int = Field(4, ge=1)
    overlap_val: float = Field(0.5, ge=0, lt=1)
    overlap_test: float = Field(0.75, ge=0, lt=1)
    cache_rate: float = Field(1.0, ge=0, le=1)
    num_workers: int = Field(0, ge=0)
    on_bad_file: Literal["raise", "skip"] = "raise"

    @model_validator(mode="after")
    def _test_split_is_not_the_validation_split(self) -> VolumeDataConfig:
        if self.test_cases == 0 and not self.test_is_validation:
            raise ValueError(
                "test_cases is 0, so the figures reported as test would be the validation split that "
                "selects the checkpoint: give test_cases >= 1, or set test_is_validation: true to "
                "report the validation split as test knowingly"
            )
        if self.test_cases > 0 and self.test_is_validation:
            raise ValueError(f"test_is_validation: true needs test_cases: 0, got test_cases: {self.test_cases}")
        return self


DataConfig = Annotated[
    SentimentDataConfig | ReIDDataConfig | SegDataConfig | VolumeDataConfig, Field(discriminator="source")
]
_Section = typing.TypeVar("_Section", SentimentDataConfig, ReIDDataConfig, SegDataConfig, VolumeDataConfig)
TASK_OF_DATA = {
    SentimentDataConfig: "regression",
    ReIDDataConfig: "retrieval",
    SegDataConfig: "segmentation",
    VolumeDataConfig: "segmentation3d",
}


LoggerName = Literal["csv", "tensorboard", "mlflow"]


def _csv_only() -> list[LoggerName]:
    return ["csv"]


class TrainConfig(_Strict):
    """Optimisation and the Lightning trainer (GRF public recipe as defaults)."""

    max_epochs: int = Field(default=100, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.01, ge=0)
    warmup_epochs: int = Field(default=5, ge=0)
    min_lr: float = Field(default=1e-6, ge=0)
    patience: int = Field(default=20, ge=1)
    grad_clip: float | None = 1.0
    lr_backbone: float | None = Field(default=None, gt=0, description="retrieval: lr of image/text encoders")
    optimizer: Literal["adamw", "sgd"] = Field(default="adamw", description="segmentation: sgd (EA-DK) or adamw")
    momentum: float = Field(default=0.9, ge=0, lt=1, description="sgd momentum")
    schedule: Literal["warmup_cosine", "poly"] = Field(default="warmup_cosine", description="segmentation: per step")
    poly_power: float = Field(default=0.9, gt=0)
    threshold: float = Field(default=0.5, gt=0, lt=1, description="segmentation: probability threshold (paper metrics)")
    temperature: float = Field(default=0.2, gt=0, description="segmentation3d: InfoNCE temperature")
    hard_negatives: int = Field(default=3, ge=1, description="segmentation3d: hard negatives per concept pair")
    global_alignment: Literal["concept_weighted", "uniform"] = Field(
        default="concept_weighted",
        description="segmentation3d: weigh each class's global InfoNCE term by its concept-to-vision similarity "
        "(the paper) or not",
    )
    local_alignment: bool = Field(default=True, description="segmentation3d: the concept-level InfoNCE term")
    loss: Literal["l1", "mse"] = "l1"
    aux_weight: float = Field(default=0.4, ge=0)
    margin: float = Field(default=0.3, ge=0, description="retrieval: triplet margin")
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    id_weight: float = Field(default=1.0, ge=0)
    triplet_weight: float = Field(default=1.0, ge=0)
    seed: int = 1111
    deterministic: bool | Literal["warn"] = Field(
        default="warn",
        description="warn: deterministic algorithms where PyTorch has them, a warning (not an error) "
        "for an operation without one (several CUDA kernels); true: strict, an error there; false: fastest",
    )
    accelerator: str = "auto"
    devices: int | str | list[int] = "auto"
    strategy: str = Field(
        default="auto", description="Lightning strategy: auto, ddp, ddp_find_unused_parameters_true, ..."
    )
    num_nodes: int = Field(default=1, ge=1)
    sync_batchnorm: bool = False
    accumulate_grad_batches: int = Field(default=1, ge=1)
    precision: Precision | Literal["auto"] = Field(
        default="auto",
        description="auto: what the hardware computes natively, resolved once at the start of a run and kept in its "
        "config.yaml and environment.json (gpfuse.utils.precision); any other value is used as given",
    )
    channels_last: bool = Field(
        default=False,
        description="convolutional models: weights in channels_last memory layout "
        "(faster on CPUs with oneDNN and on tensor-core GPUs; same results)",
    )
    monitor: str = "valid/MAE"
    monitor_mode: Literal["min", "max"] = "min"
    loggers: list[LoggerName] = Field(
        default_factory=_csv_only,
        description="where training logs go: csv (logs/, always written), tensorboard (tensorboard/), "
        "mlflow (mlflow_tracking_uri); each gets the run config and the final test metrics",
    )
    mlflow_tracking_uri: str | None = Field(
        default=None, description="mlflow logger: the tracking store (default: the file store RUN/mlruns)"
    )


class RunConfig(_Strict):
    name: str
    output_dir: str = "runs"
    data: DataConfig
    model: dict[str, Any]
    train: TrainConfig = Field(default_factory=TrainConfig)

    @property
    def task(self) -> str:
        """``regression`` (sentiment), ``retrieval`` (re-identification), ``segmentation`` (image/mask folders) or
        ``segmentation3d`` (Decathlon volumes)."""
        return TASK_OF_DATA[type(self.data)]

    def data_as(self, kind: type[_Section]) -> _Section:
        """``data`` as the section ``kind``, for code of one task kind (the task is chosen by the section's type,
        :attr:`task`); a clear error where the run is of another kind."""
        if not isinstance(self.data, kind):
            raise TypeError(f"{self.name}: a {self.task!r} run (data.source {self.data.source!r}), not {kind.__name__}")
        return self.data

    def data_paths(self) -> list[str]:
        """Every dataset file or folder the run reads."""
        d = self.data
        return [*d.train, *d.val, *d.test.values()] if isinstance(d, SegDataConfig) else [d.root]

    def model_options(self) -> dict[str, Any]:
        """The model section without its ``name``."""
        return {k: v for k, v in self.model.items() if k != "name"}


#: model arguments that come from the data at run time, never from a config
RUNTIME_OPTIONS = ("input_dims", "num_classes", "class_texts")


def _options_schema(name: str) -> type[BaseModel]:
    """A strict pydantic model built from the constructor signature of model ``name`` (less RUNTIME_OPTIONS)."""
    factory = MODELS[name]
    hints = typing.get_type_hints(factory.__init__)
    fields: dict[str, Any] = {"name": (str, ...)}
    for param in list(inspect.signature(factory).parameters.values()):
        if (
            param.name in RUNTIME_OPTIONS
            or param.name == "self"
            or param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL)
        ):
            continue
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[param.name] = (hints.get(param.name, Any), default)
    return create_model(f"{name}_options", __config__=ConfigDict(extra="forbid", strict=False), **fields)


def _format(err: ValidationError, prefix: str = "") -> str:
    lines = []
    tags = {
        "mosi",
        "pickle",
        "npz",
        "colo_pair",
        "market1501",
        "cuhk01",
        "polyp_folders",
        "decathlon",
    }  # union tags pydantic adds to the path
    for e in err.errors():
        loc = [p for i, p in enumerate(e["loc"]) if not (i == 1 and e["loc"][0] == "data" and p in tags)]
        key = ".".join(str(p) for p in (prefix, *loc) if p != "")
        lines.append(
            f"  {key}: {e['msg']} (got {e.get('input')!r})"
            if e["type"] != "missing"
            else f"  {key}: required key missing"
        )
    return "\n".join(lines)


def _parse_override(item: str) -> tuple[list[str], Any]:
    """``"train.lr=3e-4"`` -> (``["train", "lr"]``, 0.0003): the value parsed as YAML."""
    key, sep, value = item.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r} is not of the form key.path=value")
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"override {item!r}: the value {value!r} is not valid YAML ({problem})") from None
    return key.split("."), parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``raw`` with each ``key.path=value`` applied in turn: the value replaces what is at the path (a mapping
    given as the value replaces the mapping there, so ``--set data.test={}`` drops every test set)."""
    out = copy.deepcopy(raw)
    for item in overrides:
        path, value = _parse_override(item)
        node = out
        for depth, part in enumerate(path[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(
                    f"override {item!r}: {'.'.join(path[: depth + 1])} is {child!r}, not a mapping "
                    "that could hold " + ".".join(path[depth + 1 :])
                )
            node = child
        node[path[-1]] = value
    return out


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["train.lr=3e-4", "data.modalities=[text]"]`` -> nested dict (values parsed as YAML)."""
    return apply_overrides({}, overrides)


def validate_config(raw: dict[str, Any], source: str = "<config>") -> RunConfig:
    """Validate a config mapping; errors name ``source`` and every bad key."""
    try:
        config = RunConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(f"{source}: invalid configuration\n{_format(err)}") from None
    name = config.model.get("name")
    if name not in MODELS:
        raise ConfigError(f"{source}: model.name must be one of {sorted(MODELS)}, got {name!r}")
    try:
        options = _options_schema(name).model_validate(config.model)
    except ValidationError as err:
        raise ConfigError(f"{source}: invalid model options for {name!r}\n{_format(err, 'model')}") from None
    config.model = options.model_dump()  # resolved: every option of the model, defaults included
    return config


def validate_saved_config(raw: dict[str, Any], source: str) -> RunConfig:
    """:func:`validate_config` for a run folder's saved config. A run saved before ``data.split_seed`` existed
    drew its splits with ``train.seed``: it keeps them (its evaluation and prediction read the same test set)."""
    config = validate_config(raw, source)
    data = raw.get("data")
    if isinstance(data, dict) and "split_seed" not in data and "split_seed" in type(config.data).model_fields:
        config.data = config.data.model_copy(update={"split_seed": config.train.seed})
    return config


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read and validate a YAML run config, applying ``key.path=value`` overrides first."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start}); is it a config file?") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(raw).__name__}")
    return validate_config(apply_overrides(raw, overrides or []), str(path))


def dump_config(config: RunConfig) -> str:
    """The resolved config as YAML (what a run folder keeps)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
