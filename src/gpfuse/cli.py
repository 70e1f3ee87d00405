"""The ``gpfuse`` command: train, eval, summary, report, predict, info, profile, convert, demo.

Every error reaches the user as one ``error:`` line that names the file, key or value, with exit code 2
(:func:`main`); ``gpfuse --debug COMMAND`` shows the traceback instead."""

from __future__ import annotations

import shlex
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, cast

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from monai.networks.nets import SwinUNETR

    from gpfuse.inference.saved_run import Engine

warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # Lightning-internal deprecation noise
app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console(soft_wrap=True)  # long paths stay on one line

DEMO_CONFIGS = (
    "configs/grf_mosi_demo.yaml",
    "configs/gpf_net_demo.yaml",
    "configs/ea_dk_demo.yaml",
    "configs/pgf_net_demo.yaml",
    "configs/bipvl_seg_demo.yaml",
)
SEG_ENCODERS = ("efficientnet_lite0", "res2net50_v1b_26w_4s", "resnet50")
PAPER_SIZES = {
    "pgf_net": "3.09M trainable parameters with BERT-base (110M frozen); see README for why ours differ",
    "gpf_net": "51.3M parameters, 71.5 GFLOPs (ResNet-50 + ALBERT-base); see README",
}


def _seeds(text: str | None, default: int) -> list[int]:
    if not text:
        return [default]
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise typer.BadParameter(f"--seeds/--folds must be comma-separated integers, got {text!r}") from None


def _table(title: str, rows: dict[str, dict[str, object]]) -> Table:
    """One row per metric, one column per split; a value, a [mean, std] pair, or blank where a split lacks it
    (segmentation test sets report ``<set>/<metric>``)."""
    table = Table(title=title)
    table.add_column("metric")
    for stage in rows:
        table.add_column(stage, justify="right")
    keys = list(dict.fromkeys(k for metrics in rows.values() for k in metrics))
    for key in keys:
        cells = []
        for metrics in rows.values():
            v = metrics.get(key)
            cells.append(
                "" if v is None else f"{v[0]:.4f} ± {v[1]:.4f}" if isinstance(v, (list, tuple)) else f"{v:.4f}"
            )
        table.add_row(key, *cells)
    return table


_debug = False


@app.callback()
def _options(debug: bool = typer.Option(False, "--debug", help="show the full traceback of an error")) -> None:
    global _debug
    _debug = debug


def _describe(err: BaseException) -> str:
    """One line for the user: our messages name the file, key or value; an OS error its file; anything else
    its type too."""
    if isinstance(err, OSError) and err.strerror and not str(err).startswith(err.strerror):
        return f"{err.strerror}: {err.filename}" if err.filename else str(err)
    message = str(err).strip() or type(err).__name__
    ours = (ValueError, KeyError, FileNotFoundError, FileExistsError, FloatingPointError, OSError)
    if isinstance(err, KeyError) and err.args:
        message = str(err.args[0])
    return message if isinstance(err, ours) else f"{type(err).__name__}: {message}"


def main() -> None:
    """The console script: runs the command; an error becomes one ``error:`` line and exit code 2."""
    import click

    try:
        code = app(standalone_mode=False)
    except click.exceptions.Abort:
        console.print("aborted")
        sys.exit(1)
    except click.ClickException as err:  # usage errors: click's own message and exit code
        err.show()
        sys.exit(err.exit_code)
    except Exception as err:
        if _debug:
            raise
        console.print(f"[bold red]error:[/] {escape(_describe(err))}", soft_wrap=True)  # as text, [brackets] too
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)


@app.command()
def train(
    config: Path = typer.Argument(..., help="YAML run config"),
    set_: list[str] = typer.Option([], "--set", help="override, e.g. --set train.lr=3e-4"),
    seeds: str | None = typer.Option(None, help="comma-separated seeds, e.g. 1111,1112,1113"),
    folds: str | None = typer.Option(None, help="comma-separated data.fold values (CV folds, random splits)"),
    resume: bool = typer.Option(False, help="continue the run(s) from checkpoints/last.ckpt"),
) -> None:
    """Train CONFIG (one run per seed and fold); prints the metrics, mean ± std over runs."""
    from gpfuse.config import load_config
    from gpfuse.tasks.runner import is_main_process, train_seeds

    cfg = load_config(config, set_)
    fold_list = _seeds(folds, 0) if folds else None
    summary = train_seeds(
        cfg, _seeds(seeds, cfg.train.seed), resume=resume, command=shlex.join(sys.argv), folds=fold_list
    )
    if not is_main_process():
        return
    rows = {k: summary[k] for k in ("valid", "test")}
    runs = len(summary["seeds"]) * len(summary.get("folds", [None]))
    if runs == 1:
        rows = {stage: {k: v[0] for k, v in metrics.items()} for stage, metrics in rows.items()}
    over = f"seeds {summary['seeds']}" + (f", folds {summary['folds']}" if "folds" in summary else "")
    console.print(_table(f"{cfg.name}: {'mean ± std over ' if runs > 1 else ''}{over}", rows))
    console.print(f"parameters: {summary['parameters']}; runs in {Path(cfg.output_dir) / cfg.name}")


@app.command("eval")
def eval_(
    run_dir: Path = typer.Argument(..., help="a run folder (…/seed_1111)"),
    set_: list[str] = typer.Option(
        [],
        "--set",
        help="where it runs, e.g. --set train.devices=2 --set "
        "train.strategy=ddp (train.accelerator, devices, strategy, num_nodes, "
        "data.num_workers)",
    ),
    data: Path | None = typer.Option(None, help="another labelled set in the run's layout to score"),
    name: str | None = typer.Option(None, help="with --data: writes metrics_NAME.json (default: the folder's name)"),
    engine: str = typer.Option(
        "torch", help="torch, or onnxruntime: score the deployed ONNX file (2D segmentation; metrics_onnxruntime.json)"
    ),
    onnx: Path | None = typer.Option(None, help="--engine onnxruntime: the ONNX file (default RUN_DIR/model.onnx)"),
) -> None:
    """Re-evaluate a run's saved model on its valid and test splits (on several processes with --set), or with
    --data on another labelled set of the same layout (metrics_NAME.json beside metrics.json, never over it); with
    --engine onnxruntime the run's exported file instead of its torch model (metrics_onnxruntime.json)."""
    from gpfuse.tasks.runner import evaluate, is_main_process

    metrics = evaluate(run_dir, set_, data, name, cast("Engine", engine), onnx)
    if not is_main_process():
        return
    title = str(run_dir if data is None else data) + ("" if engine == "torch" else f" ({engine})")
    console.print(_table(title, {k: metrics[k] for k in ("valid", "test") if k in metrics}))
    for figure in metrics["figures"]:
        console.print(f"wrote {figure}")


@app.command()
def summary(root: Path = typer.Argument(..., help="folder holding finished runs, e.g. runs/grf_mosi")) -> None:
    """Mean ± std of every metric over the finished runs under ROOT (writes ROOT/summary.json)."""
    from gpfuse.tasks.runner import summarise_folder

    result = summarise_folder(root)
    console.print(
        _table(f"{root}: mean ± std over {len(result['runs'])} runs", {k: result[k] for k in ("valid", "test")})
    )


@app.command()
def report(
    runs: list[Path] = typer.Argument(..., help="run folders or roots of runs (several roots: a comparison)"),
    out: Path = typer.Option(Path("report.html"), help="the HTML file to write"),
    markdown: Path | None = typer.Option(None, help="also write the metrics tables as GitHub markdown here"),
) -> None:
    """One self-contained HTML page of finished runs: runs, metrics (mean ± std over the runs of a root; a
    comparison over several roots), curves, fusion gates and the worst / best test samples."""
    from gpfuse.report import write_report

    console.print(f"wrote {write_report(list(runs), out, markdown)}")
    if markdown is not None:
        console.print(f"wrote {markdown}")


@app.command()
def predict(
    run_dir: Path,
    data: Path = typer.Argument(
        ...,
        help="data in the run's layout (folder or file); segmentation: images folder or video; 3D: NIfTI file/folder",
    ),
    out: Path = typer.Option(Path("predictions.csv"), help="CSV to write (segmentation, 3D: a folder; video: out.mp4)"),
    save_probabilities: bool = typer.Option(
        False, help="segmentation: also 8-bit probability maps (what the PraNet-toolbox measures score)"
    ),
    engine: str = typer.Option("torch", help="torch, or onnxruntime: the run's ONNX file (gpfuse export) on the CPU"),
    onnx: Path | None = typer.Option(None, help="--engine onnxruntime: the ONNX file (default RUN_DIR/model.onnx)"),
    overwrite: bool = typer.Option(
        False, help="replace an earlier prediction at --out (refused otherwise); other files there are kept"
    ),
) -> None:
    """Apply the run's model to DATA: sentiment scores (id,split,score,label), re-identification top-10
    rankings (query,rank,gallery,distance,same_id), segmentation masks + overlays + predictions.csv (for a
    video: an overlay video + per-frame CSV, and the frames/s achieved), or 3D label volumes on each input's
    grid."""
    from gpfuse.tasks.runner import predict as run_predict

    path = run_predict(run_dir, data, out, save_probabilities, cast("Engine", engine), onnx, overwrite)
    if path is not None:
        console.print(f"predictions written to {path}")


@app.command()
def export(
    run_dir: Path = typer.Argument(..., help="a finished run folder"),
    format_: str = typer.Option("onnx", "--format", help="only onnx"),
    out: Path | None = typer.Option(None, help="the file to write (default RUN_DIR/model.onnx)"),
    opset: int = typer.Option(18, help="ONNX opset"),
    verify_with: list[Path] = typer.Option(
        [], help="real inputs to verify on (default: the run's validation/test images found from here)"
    ),
    tolerance: float = typer.Option(1e-4, help="largest ONNX Runtime vs torch difference allowed"),
    image_only: bool = typer.Option(False, help="only the image input (GPF-Net with reports: the no-report path)"),
    int8: bool = typer.Option(
        False, help="also write RUN_DIR/model.int8.onnx: static int8, refused below --min-agreement (2D segmentation)"
    ),
    calibration: int = typer.Option(32, help="--int8: training images the activation ranges are calibrated on"),
    min_agreement: float = typer.Option(
        0.98, help="--int8: least Dice between the int8 file's masks and torch's on the run's validation images"
    ),
) -> None:
    """Export the run's model as ONNX with its preprocessing as metadata, verified with ONNX Runtime on real
    inputs; with --int8 also its static int8 form, refused when its masks drift from torch's."""
    from gpfuse.export import export_onnx, quantize_int8

    if format_ != "onnx":
        raise ValueError(f"--format {format_!r}: only 'onnx' is supported")
    path = export_onnx(run_dir, out, opset, verify_with or None, tolerance=tolerance, image_only=image_only)
    console.print(f"wrote {path} (verified with ONNX Runtime)")
    if int8:
        report = quantize_int8(
            run_dir, path, calibration=calibration, verify_with=verify_with or None, min_agreement=min_agreement
        )
        console.print(
            f"wrote {report.path} (static int8, calibrated on {report.calibration_images} training images): its "
            f"masks agree with torch's at Dice {report.agreement:.4f} on {report.images} images "
            f"(largest probability difference {report.largest_difference:.3f})"
        )


@app.command()
def info() -> None:
    """Versions, this machine (what runs record in environment.json) and what ``train.precision: auto`` chooses
    on it, models, fusions and the datasets found."""
    import importlib.metadata as md
    import json
    import os

    from gpfuse.fusion import FUSIONS
    from gpfuse.models import MODELS
    from gpfuse.utils.environment import describe, summary_line
    from gpfuse.utils.precision import resolve_precision

    for pkg in ("gpfuse", "torch", "lightning", "transformers", "peft", "monai", "numpy", "onnxruntime"):
        try:
            console.print(f"{pkg:14s} {md.version(pkg)}")
        except md.PackageNotFoundError:
            console.print(f"{pkg:14s} not installed")
    env = describe()
    console.print(f"machine:  {summary_line(env)}", markup=False)
    console.print(f"environment.json of a run here: {json.dumps(env)}", markup=False, highlight=False)
    native = "yes" if env["cpu_native_bf16"] else "no: bf16 would be emulated, about 40x slower than fp32"
    console.print(f"native bf16 on the CPU: {native}")
    auto = ", ".join(f"{name} {resolve_precision('auto', name)}" for name in sorted(MODELS))
    console.print(f"train.precision auto here: {auto}")
    console.print(f"models:   {', '.join(sorted(MODELS))}")
    console.print(f"fusions:  {', '.join(sorted(FUSIONS))}")
    root = Path(os.environ.get("GPFUSE_DATA", "../shared/data"))
    found = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    console.print(f"datasets in {root}: {', '.join(found) if found else 'none found (set GPFUSE_DATA)'}")


@app.command()
def profile(
    model: str = typer.Argument(..., help="model name or YAML config"),
    input_dims: str = typer.Option("text=384,audio=73,vision=35", help="sentiment: modality=size,..."),
    num_classes: int = typer.Option(24, help="re-identification: training identities"),
    batch_size: int = 32,
    seq_len: int = 50,
    image_size: int | None = typer.Option(None, help="image side (default 224; 352 for ea_dk)"),
) -> None:
    """Parameters (total/trainable), FLOPs and forward time of MODEL on synthetic input (sentiment models:
    BATCH_SIZE x SEQ_LEN feature sequences; GPF-Net: one image + a full-length report; EA-DK: one image,
    once per image encoder)."""
    import torch

    from gpfuse.config import SentimentDataConfig, load_config
    from gpfuse.models import create_model
    from gpfuse.tasks.profile import image_text_batch, profile_model, synthetic_batch

    dims = {k: int(v) for k, v in (item.split("=") for item in input_dims.split(","))}
    if model.endswith((".yaml", ".yml")):
        cfg = load_config(model)
        name, options = cfg.model["name"], cfg.model_options()
        if cfg.task == "regression":
            dims = {m: dims[m] for m in cfg.data_as(SentimentDataConfig).modalities}
    else:
        name, options = model, {}
    if name == "bipvl_seg":
        side = image_size or 96
        prompts = [
            ["A medical image of the background."] + [f"concept {k} of the background." for k in range(5)],
            ["A medical image of the organ."] + [f"concept {k} of the organ." for k in range(5)],
        ]
        for label, switches in (("full", {}), ("vision-only", {"text": False, "alignment": False})):
            net = create_model(name, num_classes=2, class_texts=prompts, **{**options, **switches})
            vision = cast("SwinUNETR", net.vision)  # BiPVLSeg's image branch
            figures = profile_model(
                net,
                {"image": torch.randn(1, vision.swinViT.patch_embed.proj.in_channels, side, side, side)},
                repeats=1,
            )
            console.print(
                f"bipvl_seg {label}, 1 patch {side}^3: {figures['parameters']:,} parameters "
                f"({figures['trainable']:,} trainable), {figures['gflops']:.1f} GFLOPs, "
                f"{figures['forward_ms']:.0f} ms forward on CPU"
            )
        return
    if name == "ea_dk":
        side = image_size or 352
        for encoder in [options["encoder"]] if "encoder" in options else SEG_ENCODERS:
            net = create_model(name, **{**options, "encoder": encoder, "encoder_weights": None})
            figures = profile_model(net, {"image": torch.randn(1, 3, side, side)}, repeats=3)
            console.print(
                f"ea_dk with {encoder}, 1 image {side}x{side}: {figures['parameters']:,} parameters, "
                f"{figures['gflops']:.2f} GFLOPs, {figures['forward_ms']:.0f} ms forward on CPU"
            )
        return
    image_size = image_size or 224
    if name == "gpf_net":
        net = create_model(name, num_classes=num_classes, **options)
        batch = image_text_batch(1, image_size, net.get_buffer("pos.pe").shape[0] - 1)  # the positional table
        shape = f"1 image {image_size}x{image_size} + {batch['text_ids'].shape[1]} report tokens"
    elif name == "pgf_net":
        dims.pop("text", None)
        net = create_model(name, input_dims=dims, **options)
        batch = {**synthetic_batch(dims, batch_size, seq_len), **image_text_batch(batch_size, 1, seq_len)}
        batch.pop("image")
        shape = f"batch {batch_size} x {seq_len} text tokens and audio/visual steps"
    else:
        net = create_model(name, input_dims=dims, **options)
        batch, shape = synthetic_batch(dims, batch_size, seq_len), f"batch {batch_size} x {seq_len} steps"
    figures = profile_model(net, batch)
    console.print(f"{name}, {shape}:")
    for k, v in figures.items():
        console.print(f"  {k:22s} {v:,.3f}" if isinstance(v, float) else f"  {k:22s} {v:,}")
    if name in PAPER_SIZES:
        console.print(f"  paper: {PAPER_SIZES[name]}")


@app.command()
def convert(src: Path, dst: Path, layout: str = typer.Option("auto", help="auto, mmsa or mult")) -> None:
    """Convert an MMSA or MulT feature pickle (read with a restricted unpickler) to a safe .npz."""
    from gpfuse.data.sentiment_pickles import convert_feature_pickle

    path = convert_feature_pickle(src, dst, layout=layout)
    console.print(f"wrote {path}")


@app.command()
def demo(configs: list[Path] = typer.Option([Path(c) for c in DEMO_CONFIGS], "--config", help="demo configs")) -> None:
    """Train and test each demo config: GRF on CMU-MOSI, GPF-Net on a generated Colo-Pair folder, EA-DK on a
    subset of Kvasir-SEG (tested on its val split and CVC-ClinicDB), PGF-Net on CMU-MOSI, BiPVL-Seg on a few
    MSD Hippocampus volumes; synthetic data in the same layouts where the shared copies are absent. Prints
    the metrics and the run folders, then writes one HTML report of all of them (``gpfuse report``)."""
    import time

    from gpfuse.config import load_config
    from gpfuse.tasks.demo_data import with_demo_data
    from gpfuse.tasks.runner import run_dir_for
    from gpfuse.tasks.runner import train as run_train

    stamp = time.strftime("%Y%m%d-%H%M%S")
    roots: list[Path] = []
    for path in configs:
        cfg = load_config(path)
        cfg = cfg.model_copy(update={"name": f"{cfg.name}_{stamp}"})
        cfg = with_demo_data(cfg, Path(cfg.output_dir) / "demo_data")
        root = Path(cfg.data.root if hasattr(cfg.data, "root") else cfg.data.train[0])
        metrics = run_train(cfg, command=shlex.join(sys.argv))
        console.print(
            _table(
                f"{cfg.model['name']} on {root} (best epoch {metrics['best_epoch']})",
                {k: metrics[k] for k in ("valid", "test")},
            )
        )
        console.print(f"parameters: {metrics['parameters']}")
        console.print(f"run folder: {run_dir_for(cfg)}")
        roots.append(run_dir_for(cfg).parent)
    if roots:
        from gpfuse.report import write_report

        report = write_report(roots, Path(cfg.output_dir) / f"demo_report_{stamp}.html")
        console.print(f"report: {report} (one self-contained file: open it in any browser)")


if __name__ == "__main__":
    main()
